"""A task attached to a contact the CRM no longer has: the contact's push creates it again under a new
id, and the task goes to that one instead of being dead-lettered on the old id."""

from __future__ import annotations

import json

import pytest

from nurture.api.crm_sync.v1 import crm_sync_pb2
from tests.integration.crm_sync.conftest import AUTH, Mesh

pytestmark = pytest.mark.anyio


async def test_a_task_goes_to_a_contact_the_crm_has(mesh: Mesh) -> None:
    # The CRM id the contact came with is one the CRM does not have (deleted there since).
    c = crm_sync_pb2.Contact(crm_id="gone-1", email="bo@example.com", first_name="Bo",
                             properties_json=json.dumps({"company": "Co"}))
    c.modified_at.FromDatetime(mesh.clock.now())
    reply = await mesh.crm.UpsertContacts(crm_sync_pb2.UpsertContactsRequest(contacts=[c]), metadata=AUTH, timeout=10)
    lead_id = reply.results[0].lead_id
    await mesh.sales.RequestTask(crm_sync_pb2.TaskRequest(dedupe_key="gone:1", lead_id=lead_id, kind="sales_alert",
                                                          title="Call now", priority="high"), timeout=5)
    await mesh.settle()
    types = [i.type for i in await mesh.timeline(lead_id)]
    assert "push_dead" not in types and "task_pushed" in types, types
    contacts = mesh.emulator.get("/crm/v3/objects/contacts?limit=100")["results"]
    ids = [c["id"] for c in contacts if c["properties"].get("email") == "bo@example.com"]
    tasks = mesh.emulator.get("/crm/v3/objects/tasks")["results"]
    assert len(ids) == 1 and [t["properties"]["hs_task_subject"] for t in tasks] == ["Call now"]
