"""Outbound connectors. `Connector` is what the push queue needs from a CRM; `HubSpotConnector`
speaks HubSpot's CRM v3 objects API (contacts, their batch update, tasks, notes, associations) at
settings.crm_url.

Every failure is classified: `Retryable` (timeouts, connection errors, 5xx, 429 with its Retry-After)
or `Permanent` (any other 4xx: the request itself is wrong; retrying cannot help).
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from services.crm_sync.http import HttpClient, RequestTimeout, Response, TransportError

TASK_CONTACT = 204   # HubSpot default association type ids
NOTE_CONTACT = 202
NOTE_TASK = 228      # not a HubSpot default: the emulator's note→task link (documented there)
BATCH_UPDATE = 100   # HubSpot's limit of inputs per batch request


class PushError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Retryable(PushError):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class Permanent(PushError):
    pass


class NotFound(Permanent):
    pass


class Connector(Protocol):
    async def upsert_contact(self, remote_id: str | None, properties: dict[str, str],
                             create_properties: dict[str, str]) -> str: ...

    async def update_contacts(self, updates: dict[str, dict[str, str]]) -> set[str]: ...

    async def find(self, object_type: str, prop: str, value: str) -> str | None: ...

    async def create_task(self, contact_id: str, properties: dict[str, str]) -> str: ...

    async def create_note(self, contact_id: str, task_id: str | None, properties: dict[str, str]) -> str: ...

    async def update_deal(self, deal_id: str, properties: dict[str, str]) -> None: ...

    async def archive_contact(self, remote_id: str) -> None: ...

    async def close(self) -> None: ...


_EXISTING = re.compile(r"Existing ID: (\d+)")


class HubSpotConnector:
    """HubSpot CRM v3 over one pooled HTTP/1.1 client."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 5.0,
                 max_connections: int = 32) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = HttpClient(base_url, headers=headers, timeout=timeout, max_connections=max_connections)

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            r = await self._client.request(method, path, body)
        except RequestTimeout as exc:
            raise Retryable(f"timeout: {exc} on {method} {path}") from exc
        except TransportError as exc:
            raise Retryable(f"unreachable: {exc}") from exc
        if r.status < 300:
            try:
                return r.json()
            except ValueError as exc:
                raise Retryable(f"HTTP {r.status} with a malformed body") from exc
        message = _message(r)
        if r.status == 429 or r.status >= 500:
            raise Retryable(f"HTTP {r.status}: {message}", _retry_after(r.headers.get("retry-after")))
        if r.status == 404:
            raise NotFound(f"HTTP 404: {message}")
        raise Permanent(f"HTTP {r.status}: {message}")

    async def upsert_contact(self, remote_id: str | None, properties: dict[str, str],
                             create_properties: dict[str, str]) -> str:
        """PATCH the known contact with `properties`, else create it with `create_properties`; a create
        that meets an existing contact with the same email (409, also what a retried create whose
        answer was lost meets) updates that one; one without an email is first searched for by its
        `nurture_lead_id`."""
        if remote_id:
            try:
                await self._call("PATCH", f"/crm/v3/objects/contacts/{remote_id}", {"properties": properties})
                return remote_id
            except NotFound:
                pass  # deleted in the CRM: create it again
        lead_id = create_properties.get("nurture_lead_id")
        if lead_id and not create_properties.get("email"):
            # Without an email the CRM cannot refuse a second create; an earlier try whose answer was
            # lost (timeout, crash) is found by the lead id it carries.
            found_id = await self.find("contacts", "nurture_lead_id", lead_id)
            if found_id is not None:
                await self._call("PATCH", f"/crm/v3/objects/contacts/{found_id}", {"properties": create_properties})
                return found_id
        try:
            created = await self._call("POST", "/crm/v3/objects/contacts", {"properties": create_properties})
            return str(created["id"])
        except Permanent as exc:
            found = _EXISTING.search(exc.reason)
            if not exc.reason.startswith("HTTP 409") or not found:
                raise
            existing = found.group(1)
            await self._call("PATCH", f"/crm/v3/objects/contacts/{existing}", {"properties": properties})
            return existing

    async def update_contacts(self, updates: dict[str, dict[str, str]]) -> set[str]:
        """PATCH several known contacts in one request (`/batch/update`, at most BATCH_UPDATE of them):
        the ids the CRM answered as updated. One HTTP exchange instead of one per contact is most of a
        push's cost. A contact the CRM did not answer for is the caller's to push alone, as is every
        contact of a batch refused as a whole (`Permanent`: an unknown id, a taken email)."""
        body = {"inputs": [{"id": remote_id, "properties": props} for remote_id, props in updates.items()]}
        answer = await self._call("POST", "/crm/v3/objects/contacts/batch/update", body)
        return {str(r.get("id")) for r in (answer or {}).get("results") or [] if isinstance(r, dict)}

    async def find(self, object_type: str, prop: str, value: str) -> str | None:
        body = {"filterGroups": [{"filters": [{"propertyName": prop, "operator": "EQ", "value": value}]}], "limit": 1}
        found = await self._call("POST", f"/crm/v3/objects/{object_type}/search", body)
        results = (found or {}).get("results") or []
        return str(results[0]["id"]) if results else None

    async def create_task(self, contact_id: str, properties: dict[str, str]) -> str:
        body = {"properties": properties, "associations": [_assoc(contact_id, TASK_CONTACT)]}
        created = await self._call("POST", "/crm/v3/objects/tasks", body)
        return str(created["id"])

    async def create_note(self, contact_id: str, task_id: str | None, properties: dict[str, str]) -> str:
        assocs = [_assoc(contact_id, NOTE_CONTACT)] + ([_assoc(task_id, NOTE_TASK)] if task_id else [])
        created = await self._call("POST", "/crm/v3/objects/notes", {"properties": properties, "associations": assocs})
        return str(created["id"])

    async def update_deal(self, deal_id: str, properties: dict[str, str]) -> None:
        """Write properties onto a deal the CRM reported (a proposal's link); unknown → NotFound."""
        await self._call("PATCH", f"/crm/v3/objects/deals/{deal_id}", {"properties": properties})

    async def archive_contact(self, remote_id: str) -> None:
        try:
            await self._call("DELETE", f"/crm/v3/objects/contacts/{remote_id}")
        except NotFound:
            return


def _assoc(to_id: str, type_id: int) -> dict[str, Any]:
    return {"to": {"id": to_id}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}]}


def _message(r: Response) -> str:
    text = r.body.decode("utf-8", "replace")
    try:
        return str(r.json().get("message", text))[:300]
    except (ValueError, AttributeError):
        return text[:300]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
