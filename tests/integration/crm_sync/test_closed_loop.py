"""Closed loop in crm_sync: sales feedback holds sales tasks; the lead is not re-alerted to sales."""

from __future__ import annotations

import json

import pytest

from nurture.api.crm_sync.v1 import crm_sync_pb2
from nurture.api.scoring.v1 import scoring_pb2
from tests.integration.crm_sync.conftest import AUTH, Mesh
from tests.integration.crm_sync.test_crm_sync import contact, remote_contact, upsert

pytestmark = pytest.mark.anyio


async def _bottom_funnel(mesh: Mesh, lead_id: str, key: str) -> None:
    await mesh.scoring.IngestEvents(scoring_pb2.IngestRequest(events=[scoring_pb2.Event(
        lead_id=lead_id, type="page_viewed", idempotency_key=key,
        properties_json=json.dumps({"category": "bottom_funnel"}))]), timeout=5)
    await mesh.settle()


def _remote_tasks(mesh: Mesh, crm_id: str) -> list[dict]:
    return list(mesh.emulator.get(f"/crm/v3/objects/contacts/{crm_id}/associations/tasks")["results"])


async def test_a_disqualified_lead_is_not_re_alerted_to_sales(mesh: Mesh) -> None:
    t0 = mesh.clock.now()
    crm_id = remote_contact(mesh, "dara@example.com")
    [r] = await upsert(mesh, contact(crm_id, "dara@example.com", t0, first_name="Dara"))
    await mesh.settle()
    act = crm_sync_pb2.Activity(activity_id="dq-1", crm_id=crm_id, kind="disqualification", reason="no budget")
    act.modified_at.FromDatetime(t0)
    await mesh.crm.RecordActivity(crm_sync_pb2.RecordActivityRequest(activity=act), metadata=AUTH, timeout=5)
    await mesh.settle()
    # What the recycle track does (journeys is not running here): mark the lead.
    await mesh.scoring.UpsertLead(scoring_pb2.UpsertLeadRequest(
        id=r.lead_id, merge=True, fields_json=json.dumps({"attributes": {"sales_hold": True}})), timeout=5)
    await mesh.settle()
    await _bottom_funnel(mesh, r.lead_id, "bf-dq")
    # A journey asking too: held as well, and the same key again is a duplicate of the held task.
    req = crm_sync_pb2.TaskRequest(dedupe_key="l:alert:dq", lead_id=r.lead_id, kind="sales_alert",
                                   title="Bottom-funnel engagement: reach out", priority="high")
    first = await mesh.sales.RequestTask(req, timeout=5)
    again = await mesh.sales.RequestTask(req, timeout=5)
    assert first.task_id and again.duplicate and again.task_id == first.task_id
    await mesh.settle()
    assert _remote_tasks(mesh, crm_id) == []
    held = [i for i in await mesh.timeline(r.lead_id) if i.type == "task_held"]
    assert len(held) == 2 and all("in_sales_recycle" in i.summary for i in held), [i.summary for i in held]


async def test_the_hold_ends_with_the_mark_and_a_prospect_is_alerted(mesh: Mesh) -> None:
    t0 = mesh.clock.now()
    crm_id = remote_contact(mesh, "eli@example.com")
    [r] = await upsert(mesh, contact(crm_id, "eli@example.com", t0, first_name="Eli"))
    await mesh.scoring.UpsertLead(scoring_pb2.UpsertLeadRequest(
        id=r.lead_id, merge=True, fields_json=json.dumps({"attributes": {"sales_hold": None}})), timeout=5)
    await mesh.settle()
    await _bottom_funnel(mesh, r.lead_id, "bf-ok")
    assert len(_remote_tasks(mesh, crm_id)) == 1
    assert not [i for i in await mesh.timeline(r.lead_id) if i.type == "task_held"]
