"""Proto messages to the API's JSON shapes, and the API's input checks shared by routers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from gateway.deps import ApiError
from nurture import jsoncodec
from nurture.api.scoring.v1 import scoring_pb2


def iso(ts: Timestamp | None, present: bool = True) -> str | None:
    if ts is None or not present:
        return None
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def lead_json(lead: scoring_pb2.Lead, journeys: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    counters = jsoncodec.loads(lead.counters_json or "{}")
    interests = counters.pop("interests", {})
    return {
        "id": lead.id,
        "email": lead.email or None,
        "first_name": lead.first_name or None,
        "last_name": lead.last_name or None,
        "segment": lead.segment or None,
        "timezone": lead.timezone or None,
        "locale": lead.locale or None,
        "attributes": jsoncodec.loads(lead.attributes_json or "{}"),
        "consent": jsoncodec.loads(lead.consent_json or "{}"),
        "score": lead.score,
        "grade": lead.grade,
        "lifecycle_stage": lead.lifecycle_stage,
        "engagement": counters,
        "interests": interests,
        "crm_id": lead.crm_id or None,
        "journeys": journeys or [],
        "created_at": iso(lead.created_at, lead.HasField("created_at")),
        "updated_at": iso(lead.updated_at, lead.HasField("updated_at")),
        "last_engaged_at": iso(lead.last_engaged_at, lead.HasField("last_engaged_at")),
    }


def parse_time(value: Any, field: str) -> datetime:
    """RFC 3339 with a zone, or 422."""
    if not isinstance(value, str):
        raise ApiError(422, "invalid", f"{field} must be an RFC 3339 time string", {"field": field})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ApiError(422, "invalid", f"{field} is not an RFC 3339 time: {value!r}", {"field": field}) from exc
    if parsed.tzinfo is None:
        raise ApiError(422, "invalid", f"{field} needs a time zone (e.g. Z)", {"field": field})
    return parsed.astimezone(UTC)


def require_object(body: Any, what: str = "body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", f"{what} must be a JSON object")
    return body
