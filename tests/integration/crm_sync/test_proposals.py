"""Proposals end to end in crm_sync, with real scoring, real messaging and a real SMTP sink: a deal at the
proposal stage gets one proposal, a sales task that links it and the link on the CRM deal; a salesperson's
request makes one for the plan they name; the prospect reads it by its signed link and gets it by email once."""

from __future__ import annotations

import email
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from email import policy
from pathlib import Path

import grpc
import pytest

from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.crm_sync.v1 import crm_sync_pb2, crm_sync_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2
from nurture.settings import Settings
from services.messaging.smtp_sink import SmtpSink
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.crm_sync.conftest import AUTH, TOKEN, Emulator, Mesh

pytestmark = pytest.mark.anyio
PUBLIC = "https://nurture.example"


@dataclass
class World:
    mesh: Mesh
    proposals: crm_sync_pb2_grpc.ProposalsStub
    messaging_admin: common_pb2_grpc.AdminStub
    sink: SmtpSink

    async def settle(self) -> None:
        for _ in range(10):
            await self.mesh.settle()
            reply = await self.messaging_admin.Settle(common_pb2.SettleRequest(), timeout=30)
            if reply.work_done == 0:
                return

    def mails(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(p.read_bytes(), policy=policy.default)  # type: ignore[misc]
                for p in self.sink.messages()]


@pytest.fixture
async def world(settings: Settings, emulator: Emulator, tmp_path: Path) -> AsyncIterator[World]:
    import redis

    from nurture.api.scoring.v1 import scoring_pb2_grpc
    from nurture.clock import VirtualClock

    sink = SmtpSink(tmp_path / "mail").start()
    scoring = await start_service("scoring", settings)
    nowhere = f"127.0.0.1:{free_port()}"
    messaging = await start_service("messaging", settings.with_overrides(
        smtp_url=sink.url, scoring_addr=scoring.address, journeys_addr=nowhere, public_url=PUBLIC))
    crm_settings = settings.with_overrides(crm_url=emulator.url, scoring_addr=scoring.address, journeys_addr=nowhere,
                                           messaging_addr=messaging.address, crm_tokens={"test-crm": TOKEN},
                                           public_url=PUBLIC)
    running = await start_service("crm_sync", crm_settings)
    s_channel, c_channel, m_channel = (mesh_channel(scoring.address), mesh_channel(running.address),
                                       mesh_channel(messaging.address))
    try:
        mesh = Mesh(settings=crm_settings, scoring=scoring_pb2_grpc.ScoringStub(s_channel),
                    crm=crm_sync_pb2_grpc.CrmSyncStub(c_channel), sales=crm_sync_pb2_grpc.SalesOpsStub(c_channel),
                    admin=common_pb2_grpc.AdminStub(c_channel), scoring_admin=common_pb2_grpc.AdminStub(s_channel),
                    clock=VirtualClock(redis.Redis.from_url(settings.redis_url)), emulator=emulator, running=running)
        yield World(mesh, crm_sync_pb2_grpc.ProposalsStub(c_channel), common_pb2_grpc.AdminStub(m_channel), sink)
    finally:
        for ch in (c_channel, m_channel, s_channel):
            await ch.close()
        for svc in (running, messaging, scoring):
            await svc.stop(0.5)
        sink.stop()


async def _lead(w: World, lead_id: str, **fields: object) -> None:
    body = {"email": f"{lead_id}@example.com", "first_name": "Amara", "consent": {"email": True}, **fields}
    await w.mesh.scoring.UpsertLead(scoring_pb2.UpsertLeadRequest(id=lead_id, fields_json=json.dumps(body)),
                                    timeout=5)


async def _deal(w: World, lead_id: str, deal_id: str, stage: str, minutes: int, **props: str) -> str:
    d = crm_sync_pb2.Deal(deal_id=deal_id, lead_id=lead_id, stage=stage, amount=5000, currency="USD",
                          properties_json=json.dumps(props))
    d.modified_at.FromDatetime(w.mesh.clock.now() - timedelta(minutes=minutes))
    reply = await w.mesh.crm.ReportDeal(crm_sync_pb2.ReportDealRequest(deal=d), metadata=AUTH, timeout=10)
    return str(reply.status)


async def test_a_deal_at_the_proposal_stage_gets_one_proposal_linked_from_its_task_and_crm_deal(world: World) -> None:
    w = world
    await _lead(w, "ent-1", segment="entrepreneur", attributes={"business_sector": "fintech"})
    await w.mesh.scoring.IngestEvents(scoring_pb2.IngestRequest(events=[scoring_pb2.Event(
        lead_id="ent-1", type="resource_downloaded", idempotency_key="bp-1",
        properties_json=json.dumps({"category": "business_plan"}))]), timeout=5)
    await w.settle()  # crm_sync hears the lead (its interests) on the bus
    deal_id = str(w.mesh.emulator.post("/crm/v3/objects/deals", {"properties": {"dealname": "Amara"}})["id"])
    assert await _deal(w, "ent-1", deal_id, "qualified", 30) == "recorded"
    assert list((await w.proposals.ListProposals(crm_sync_pb2.ListProposalsRequest(lead_id="ent-1"),
                                                 timeout=5)).proposals) == []
    assert await _deal(w, "ent-1", deal_id, "proposal", 20) == "updated"
    # The CRM delivers the same update again, then a later edit at the same stage: still one proposal.
    assert await _deal(w, "ent-1", deal_id, "proposal", 20) == "duplicate"
    assert await _deal(w, "ent-1", deal_id, "proposal", 10, note="edited") == "updated"
    await w.settle()
    [p] = (await w.proposals.ListProposals(crm_sync_pb2.ListProposalsRequest(lead_id="ent-1"), timeout=5)).proposals
    assert p.deal_id == deal_id and p.plan == "investor" and p.status == "generated"
    assert [(ln.key, ln.rule) for ln in p.lines] == [("investor", "entrepreneur_segment"),
                                                     ("business_plan_review", "business_plan_interest")]
    assert p.total == 4900 + 750 and p.url.startswith(f"{PUBLIC}/p/")
    # The CRM deal carries the link, and the sales task in the CRM says where the document is.
    deal = w.mesh.emulator.get(f"/crm/v3/objects/deals/{deal_id}")
    assert deal["properties"]["nurture_proposal_url"] == p.url
    assert deal["properties"]["nurture_proposal_id"] == p.id
    contact = w.mesh.emulator.get("/crm/v3/objects/contacts/ent-1@example.com?idProperty=email")
    tasks = w.mesh.emulator.get(f"/crm/v3/objects/contacts/{contact['id']}/associations/tasks")["results"]
    bodies = [w.mesh.emulator.get(f"/crm/v3/objects/tasks/{t['toObjectId']}")["properties"]["hs_task_body"]
              for t in tasks]
    assert [b for b in bodies if p.url in b], bodies
    types = [i.type for i in await w.mesh.timeline("ent-1")]
    assert types.count("proposal_generated") == 1 and "deal_linked" in types


async def test_a_requested_proposal_is_read_by_its_signed_link_and_emailed_once(world: World) -> None:
    w = world
    await _lead(w, "fam-1", segment="family", attributes={"children": 2, "countries_of_interest": ["CA"]})
    reply = await w.proposals.GenerateProposal(crm_sync_pb2.ProposalRequest(
        lead_id="fam-1", plan="explorer", requested_by="editor"), timeout=10)
    p = reply.proposal
    assert not reply.duplicate and p.plan == "explorer" and [ln.rule for ln in p.lines] == ["requested"]
    token = p.url.rsplit("/p/", 1)[1]
    read = await w.proposals.GetProposal(crm_sync_pb2.GetProposalRequest(token=token), timeout=5)
    assert read.id == p.id and "Pathway Explorer" in read.html and "2 children" in read.html
    for bad in (token[:-2] + "xx", p.id, "nothing.here"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await w.proposals.GetProposal(crm_sync_pb2.GetProposalRequest(token=bad), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await w.settle()  # the task assigned an owner; scoring hears of it before the email is written
    sent = await w.proposals.SendProposal(crm_sync_pb2.SendProposalRequest(id=p.id), timeout=10)
    again = await w.proposals.SendProposal(crm_sync_pb2.SendProposalRequest(id=p.id), timeout=10)
    assert sent.status in ("scheduled", "sent") and again.status == "duplicate"
    await w.settle()
    mails = [m for m in w.mails() if m["To"] and "fam-1@example.com" in m["To"]]
    assert len(mails) == 1, [m["Subject"] for m in w.mails()]
    assert mails[0]["Subject"] == "Your proposal: Pathway Explorer"
    # CA interest: the north America desk comes first in sync.yaml, and its owner sends and signs it.
    assert "sam.taylor@borderbridge.example" in str(mails[0]["From"])
    text = mails[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "29.00 USD" in text and "Read Your Proposal" in text
    [listed] = (await w.proposals.ListProposals(crm_sync_pb2.ListProposalsRequest(lead_id="fam-1"),
                                                timeout=5)).proposals
    assert listed.status == "sent" and listed.message_id == sent.message_id


async def test_bad_requests_are_refused_with_what_is_wrong(world: World) -> None:
    w = world
    await _lead(w, "x-1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await w.proposals.GenerateProposal(crm_sync_pb2.ProposalRequest(lead_id="x-1", plan="gold"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "gold" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await w.proposals.GenerateProposal(crm_sync_pb2.ProposalRequest(lead_id="nobody"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await w.proposals.SendProposal(crm_sync_pb2.SendProposalRequest(id="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # A deal's proposal belongs to the deal's lead.
    await _lead(w, "x-2")
    first = await w.proposals.GenerateProposal(crm_sync_pb2.ProposalRequest(lead_id="x-1", deal_id="D9"), timeout=5)
    same = await w.proposals.GenerateProposal(crm_sync_pb2.ProposalRequest(lead_id="x-1", deal_id="D9"), timeout=5)
    assert same.duplicate and same.proposal.id == first.proposal.id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await w.proposals.GenerateProposal(crm_sync_pb2.ProposalRequest(lead_id="x-2", deal_id="D9"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
