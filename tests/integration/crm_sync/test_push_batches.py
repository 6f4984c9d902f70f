"""A pass's pushes of contacts the CRM knows go as batch updates (one HTTP exchange for many, not a
PATCH each), with each push's outcome as before: a contact deleted in the CRM refuses the batch, and
the pass pushes them one by one (the deleted one created again); a batch the CRM cannot take now is a
retry of each of its pushes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from nurture.api.scoring.v1 import scoring_pb2
from tests.integration.crm_sync.conftest import Emulator, Mesh
from tests.integration.crm_sync.test_crm_sync import contact, remote_contact, upsert

pytestmark = pytest.mark.anyio
BATCH_PATH = "/crm/v3/objects/contacts/batch/update"


async def known_contacts(mesh: Mesh, n: int, prefix: str) -> list[Any]:
    """`n` contacts the CRM holds, sent to us and pushed back once; then changed on the platform, so
    each needs a contact push again."""
    t0 = mesh.clock.now()
    results = [r for i in range(n) for r in await upsert(
        mesh, contact(remote_contact(mesh, f"{prefix}{i}@example.com"), f"{prefix}{i}@example.com", t0))]
    await mesh.settle()
    for r in results:
        await mesh.scoring.UpsertLead(scoring_pb2.UpsertLeadRequest(
            id=r.lead_id, fields_json=json.dumps({"attributes": {"company": f"Co {r.lead_id}"}}), merge=True,
            source="api"), timeout=5)
    mesh.emulator.post("/_emulator/reset-stats", {})
    return results


def requests(mesh: Mesh) -> list[tuple[str, str, int]]:
    """The CRM's requests since its stats were reset, less the test's own reads."""
    return [(r["method"], r["path"], r["status"]) for r in mesh.emulator.get("/_emulator/requests")["requests"]
            if r["method"] != "GET"]


async def pushed(mesh: Mesh, lead_id: str) -> list[dict[str, Any]]:
    return [json.loads(i.details_json) for i in await mesh.timeline(lead_id) if i.type == "contact_pushed"]


async def test_known_contacts_are_pushed_in_one_batch_update(mesh: Mesh) -> None:
    results = await known_contacts(mesh, 12, "k")
    await mesh.settle()
    assert requests(mesh) == [("POST", BATCH_PATH, 200)]  # no PATCH per contact
    assert mesh.emulator.get("/_emulator/stats")["writes"] == 12
    for r in results:
        remote = mesh.emulator.get(f"/crm/v3/objects/contacts/{r.crm_id}")["properties"]
        assert remote["company"] == f"Co {r.lead_id}" and remote["nurture_score"]
        lines = await pushed(mesh, r.lead_id)
        assert len(lines) == 2 and lines[-1]["crm_id"] == r.crm_id and "company" in lines[-1]["properties"]
    await mesh.settle()
    assert len(requests(mesh)) == 1  # recorded: nothing pushed again


async def test_a_contact_deleted_in_the_crm_sends_the_batch_one_by_one(mesh: Mesh) -> None:
    results = await known_contacts(mesh, 6, "d")
    gone = results[2]
    mesh.emulator.post("/_emulator/reset-stats", {})

    httpx.delete(f"{mesh.emulator.url}/crm/v3/objects/contacts/{gone.crm_id}", timeout=5)
    await mesh.settle()
    seen = requests(mesh)
    assert ("POST", BATCH_PATH, 404) in seen  # refused as a whole: nothing written by it
    patches = [s for s in seen if s[0] == "PATCH" and s[2] == 200]
    assert len(patches) == 5 and ("POST", "/crm/v3/objects/contacts", 201) in seen
    for r in results:
        lines = await pushed(mesh, r.lead_id)
        assert len(lines) == 2
        remote = mesh.emulator.get(f"/crm/v3/objects/contacts/{lines[-1]['crm_id']}")["properties"]
        assert remote["company"] == f"Co {r.lead_id}"
    again = (await pushed(mesh, gone.lead_id))[-1]["crm_id"]
    assert again != gone.crm_id
    assert mesh.emulator.get(f"/crm/v3/objects/contacts/{again}")["properties"]["nurture_lead_id"] == gone.lead_id


async def test_a_batch_the_crm_cannot_take_now_is_retried(mesh: Mesh) -> None:
    results = await known_contacts(mesh, 5, "r")
    mesh.emulator.fault(mode="fail", status=503, count=1)
    await mesh.settle()
    assert requests(mesh) == [("POST", BATCH_PATH, 503)]
    for r in results:
        retry = [json.loads(i.details_json) for i in await mesh.timeline(r.lead_id) if i.type == "push_retry"]
        assert len(retry) == 1 and "503" in retry[0]["error"]
    await mesh.advance(60)  # each retry falls due at its own time (the backoff's spread): pushed as it comes
    assert {s for s in requests(mesh)[1:]} <= {("PATCH", f"/crm/v3/objects/contacts/{r.crm_id}", 200)
                                                for r in results} | {("POST", BATCH_PATH, 200)}
    for r in results:
        assert len(await pushed(mesh, r.lead_id)) == 2
        assert mesh.emulator.get(f"/crm/v3/objects/contacts/{r.crm_id}")["properties"]["company"] == f"Co {r.lead_id}"


def test_the_emulators_batch_update_refuses_one_email_given_to_two_contacts_whole(emulator: Emulator) -> None:
    """All or nothing, as the emulator promises: two contacts of one batch taking the same free email
    refuse the batch before either is written (the second alone used to meet the first's new email)."""
    a = emulator.post("/crm/v3/objects/contacts", {"properties": {"email": "a@example.com"}})["id"]
    b = emulator.post("/crm/v3/objects/contacts", {"properties": {"email": "b@example.com"}})["id"]
    answer = httpx.post(f"{emulator.url}{BATCH_PATH}", timeout=5, json={"inputs": [
        {"id": a, "properties": {"email": "New@example.com", "firstname": "Ann"}},
        {"id": b, "properties": {"email": "new@example.com"}}]})
    assert answer.status_code == 409 and answer.json()["category"] == "CONFLICT"
    assert [emulator.get(f"/crm/v3/objects/contacts/{i}")["properties"].get("email") for i in (a, b)] \
        == ["a@example.com", "b@example.com"]
    assert emulator.get(f"/crm/v3/objects/contacts/{a}")["properties"].get("firstname") is None
    # Two contacts swapping nothing, each taking an email of its own, go through.
    fine = httpx.post(f"{emulator.url}{BATCH_PATH}", timeout=5, json={"inputs": [
        {"id": a, "properties": {"email": "a2@example.com"}}, {"id": b, "properties": {"email": "b2@example.com"}}]})
    assert fine.status_code == 200 and len(fine.json()["results"]) == 2
