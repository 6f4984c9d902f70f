"""Inbound contacts in batches: scoring's UpsertLeads (one transaction, per-lead outcomes) and crm_sync
handling many contacts of one call and of concurrent calls together with the same results as one by one."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from nurture.api.crm_sync.v1 import crm_sync_pb2
from nurture.api.scoring.v1 import scoring_pb2
from tests.integration.crm_sync.conftest import AUTH, Mesh

pytestmark = pytest.mark.anyio


async def test_scoring_upsert_leads_per_lead_outcomes(mesh: Mesh) -> None:
    reply = await mesh.scoring.UpsertLeads(scoring_pb2.UpsertLeadsRequest(leads=[
        scoring_pb2.UpsertLeadRequest(fields_json=json.dumps({"email": "one@example.com", "first_name": "One"})),
        scoring_pb2.UpsertLeadRequest(fields_json="[1"),
        scoring_pb2.UpsertLeadRequest(fields_json=json.dumps({"email": "not-an-email"})),
        scoring_pb2.UpsertLeadRequest(id="missing", fields_json="{}", merge=True, must_exist=True),
        # The same person again in the same call: matched by email within the transaction.
        scoring_pb2.UpsertLeadRequest(fields_json=json.dumps({"email": "one@example.com", "last_name": "Uno"}),
                                      merge=True),
    ]), timeout=10)
    ok, bad_json, bad_email, missing, again = reply.results
    assert ok.created and not ok.error_code and ok.lead.first_name == "One"
    assert bad_json.error_code == "invalid" and "JSON" in bad_json.error_message
    assert bad_email.error_code == "invalid" and "email" in bad_email.error_message
    assert missing.error_code == "not_found"
    assert not again.created and again.lead.id == ok.lead.id and again.lead.last_name == "Uno"
    lead = await mesh.scoring.GetLead(scoring_pb2.GetLeadRequest(id=ok.lead.id), timeout=5)
    assert (lead.first_name, lead.last_name) == ("One", "Uno")


def contact(crm_id: str, email: str, at, first_name: str) -> crm_sync_pb2.Contact:
    c = crm_sync_pb2.Contact(crm_id=crm_id, email=email, first_name=first_name)
    c.modified_at.FromDatetime(at)
    return c


async def test_concurrent_calls_batched_match_and_order_like_one_by_one(mesh: Mesh) -> None:
    t0 = mesh.clock.now()
    first = [contact(f"b{n}", f"b{n}@example.com", t0, f"B{n}") for n in range(40)]
    replies = await asyncio.gather(*(mesh.crm.UpsertContacts(crm_sync_pb2.UpsertContactsRequest(contacts=[c]),
                                                             metadata=AUTH, timeout=10) for c in first))
    created = {r.results[0].crm_id: r.results[0] for r in replies}
    assert {r.status for r in created.values()} == {"created"}
    assert len({r.lead_id for r in created.values()}) == 40
    # One call holding a newer and an older edit of one contact, a re-delivery, a contact matched by
    # email under a new CRM id, and a brand-new contact: each gets its own outcome.
    reply = await mesh.crm.UpsertContacts(crm_sync_pb2.UpsertContactsRequest(contacts=[
        contact("b1", "b1@example.com", t0 + timedelta(minutes=2), "Newer"),
        contact("b1", "b1@example.com", t0 + timedelta(minutes=1), "Older"),
        contact("b2", "b2@example.com", t0, "B2"),
        contact("b3-merged", "B3@example.com", t0 + timedelta(minutes=1), "Merged"),
        contact("b99", "b99@example.com", t0, "New"),
    ]), metadata=AUTH, timeout=10)
    newer, older, dup, by_email, new = reply.results
    assert newer.status == "updated" and newer.lead_id == created["b1"].lead_id
    assert older.status == "stale" and older.lead_id == created["b1"].lead_id
    assert dup.status == "duplicate"
    assert by_email.status == "updated" and by_email.lead_id == created["b3"].lead_id
    assert new.status == "created" and new.lead_id not in {r.lead_id for r in created.values()}
    lead = await mesh.scoring.GetLead(scoring_pb2.GetLeadRequest(id=created["b1"].lead_id), timeout=5)
    assert lead.first_name == "Newer"
    merged = await mesh.scoring.GetLead(scoring_pb2.GetLeadRequest(id=created["b3"].lead_id), timeout=5)
    assert merged.crm_id == "b3-merged" and merged.first_name == "Merged"


async def test_crm_ids_of_pushed_contacts_go_back_to_scoring_in_batches(mesh: Mesh, spans) -> None:
    # 45 platform leads reach the CRM as contacts; each contact's CRM id is written back onto its
    # lead. The write-backs leave together (UpsertLeads of at most LEAD_UPDATES_PER_CALL), not one
    # UpsertLead each: 45 transactions at once queued ahead of scoring's event ingest.
    reply = await mesh.scoring.UpsertLeads(scoring_pb2.UpsertLeadsRequest(leads=[
        scoring_pb2.UpsertLeadRequest(fields_json=json.dumps({"email": f"wb{i}@example.com"})) for i in range(45)
    ]), timeout=10)
    ids = [r.lead.id for r in reply.results]
    spans.clear()
    for _ in range(10):
        await mesh.settle()
        leads = (await mesh.scoring.GetLeads(scoring_pb2.GetLeadsRequest(ids=ids), timeout=5)).leads
        if all(lead.crm_id for lead in leads):
            break
        await asyncio.sleep(0.2)
    assert all(lead.crm_id for lead in leads), [lead.id for lead in leads if not lead.crm_id]
    assert len({lead.crm_id for lead in leads}) == 45
    emails = {mesh.emulator.get(f"/crm/v3/objects/contacts/{lead.crm_id}")["properties"]["email"] for lead in leads}
    assert emails == {f"wb{i}@example.com" for i in range(45)}
    names = [s.name.rsplit("/", 1)[-1] for s in spans.get_finished_spans() if s.name.startswith("/nurture.api.scoring")]
    assert "UpsertLead" not in names
    assert 3 <= names.count("UpsertLeads") <= 45 // 2, names.count("UpsertLeads")
