"""Closed loop in crm_sync: sales feedback holds sales tasks; the lead is not re-alerted to sales."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
import redis

from gateway.app import create_app
from nurture import times
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.crm_sync.v1 import crm_sync_pb2, crm_sync_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.clock import VirtualClock
from nurture.service import Running
from nurture.settings import SERVICES, Settings
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.crm_sync.conftest import AUTH, TOKEN, Emulator, Mesh
from tests.integration.crm_sync.test_crm_sync import contact, remote_contact, upsert

pytestmark = pytest.mark.anyio


@dataclass
class LoopMesh:
    """Real scoring, journeys and crm_sync on one Redis and database, the CRM emulator behind crm_sync."""
    scoring: Running
    journeys: Running
    crm_sync: Running
    score: scoring_pb2_grpc.ScoringStub
    crm: crm_sync_pb2_grpc.CrmSyncStub
    sales: crm_sync_pb2_grpc.SalesOpsStub
    admins: list[common_pb2_grpc.AdminStub]   # scoring's, crm_sync's, journeys'
    clock: VirtualClock

    async def settle(self) -> None:
        for _ in range(30):
            if not any([(await a.Settle(common_pb2.SettleRequest(), timeout=30)).work_done for a in self.admins]):
                return


@contextlib.asynccontextmanager
async def _loop_mesh(settings: Settings, emulator: Emulator) -> AsyncIterator[LoopMesh]:
    scoring = await start_service("scoring", settings)
    journeys = await start_service("journeys", settings.with_overrides(
        scoring_addr=scoring.address, messaging_addr=f"127.0.0.1:{free_port()}",
        crm_sync_addr=f"127.0.0.1:{free_port()}"))
    running = await start_service("crm_sync", settings.with_overrides(
        crm_url=emulator.url, scoring_addr=scoring.address, journeys_addr=journeys.address,
        crm_tokens={"test-crm": TOKEN}))
    channels = [mesh_channel(a) for a in (scoring.address, running.address, journeys.address)]
    try:
        yield LoopMesh(scoring, journeys, running, scoring_pb2_grpc.ScoringStub(channels[0]),
                       crm_sync_pb2_grpc.CrmSyncStub(channels[1]), crm_sync_pb2_grpc.SalesOpsStub(channels[1]),
                       [common_pb2_grpc.AdminStub(c) for c in channels],
                       VirtualClock(redis.Redis.from_url(settings.redis_url)))
    finally:
        for c in channels:
            await c.close()
        for r in (running, journeys, scoring):
            await asyncio.wait_for(r.stop(grace=0.5), 10)


async def _bottom_funnel(mesh: Mesh, lead_id: str, key: str) -> None:
    await mesh.scoring.IngestEvents(scoring_pb2.IngestRequest(events=[scoring_pb2.Event(
        lead_id=lead_id, type="page_viewed", idempotency_key=key,
        properties_json=json.dumps({"category": "bottom_funnel"}))]), timeout=5)
    await mesh.settle()


def _remote_tasks(mesh: Mesh | Emulator, crm_id: str) -> list[dict]:
    emulator = mesh.emulator if isinstance(mesh, Mesh) else mesh
    return list(emulator.get(f"/crm/v3/objects/contacts/{crm_id}/associations/tasks")["results"])


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


async def test_a_recycled_lead_that_buys_is_alerted_to_sales_again(settings: Settings, emulator: Emulator) -> None:
    """Seed 004's closed loop with the real journeys service: sales disqualify a lead, which is recycled
    and so holds their tasks; then the lead wins a deal, which ends its recycle track (outcome converted)
    before its last step clears attributes.sales_hold. The hold reads the stage, not the mark the track
    left: the customer's next bottom-funnel visit reaches sales. Before, the mark stayed and every later
    task was held."""
    async with _loop_mesh(settings, emulator) as m:
        score, crm, clock, admins, settle = m.score, m.crm, m.clock, m.admins, m.settle
        async def timeline(lead_id: str) -> list[str]:
            reply = await admins[1].Timeline(common_pb2.TimelineRequest(lead_id=lead_id), timeout=5)
            return [f"{i.type}: {i.summary}" for i in reply.items]

        async def bottom_funnel(key: str) -> None:
            await score.IngestEvents(scoring_pb2.IngestRequest(events=[scoring_pb2.Event(
                lead_id=lead_id, type="page_viewed", idempotency_key=key,
                properties_json=json.dumps({"category": "bottom_funnel"}))]), timeout=5)
            await settle()

        t0 = clock.now()
        crm_id = str(emulator.post("/crm/v3/objects/contacts", {"properties": {"email": "rio@example.com"}})["id"])
        reply = await crm.UpsertContacts(crm_sync_pb2.UpsertContactsRequest(
            contacts=[contact(crm_id, "rio@example.com", t0, first_name="Rio", jobtitle="nurse")]),
            metadata=AUTH, timeout=10)
        lead_id = reply.results[0].lead_id
        await score.UpsertLead(scoring_pb2.UpsertLeadRequest(
            id=lead_id, merge=True, fields_json=json.dumps({"consent": {"email": True}})), timeout=5)
        await settle()
        act = crm_sync_pb2.Activity(activity_id="dq-rio", crm_id=crm_id, kind="disqualification", reason="timing")
        act.modified_at.FromDatetime(t0)
        await crm.RecordActivity(crm_sync_pb2.RecordActivityRequest(activity=act), metadata=AUTH, timeout=5)
        await settle()
        await bottom_funnel("bf-1")
        # A journey asking too: held as well, and the same key again is a duplicate of the held task.
        sales = m.sales
        req = crm_sync_pb2.TaskRequest(dedupe_key="l:alert:dq", lead_id=lead_id, kind="sales_alert",
                                       title="Bottom-funnel engagement: reach out", priority="high")
        first = await sales.RequestTask(req, timeout=5)
        again = await sales.RequestTask(req, timeout=5)
        assert first.task_id and again.duplicate and again.task_id == first.task_id
        await settle()
        held = [s for s in await timeline(lead_id) if s.startswith("task_held")]
        assert len(held) == 2 and all("sales_recycled" in s for s in held), held
        assert _remote_tasks(emulator, crm_id) == []

        deal = crm_sync_pb2.Deal(deal_id="d-rio", crm_id=crm_id, stage="closed_won", amount=3000, currency="EUR")
        deal.modified_at.FromDatetime(t0 + timedelta(minutes=1))
        await crm.ReportDeal(crm_sync_pb2.ReportDealRequest(deal=deal), metadata=AUTH, timeout=5)
        await settle()
        lead = await score.GetLead(scoring_pb2.GetLeadRequest(id=lead_id), timeout=5)
        assert lead.lifecycle_stage == "customer"
        assert json.loads(lead.attributes_json).get("sales_hold") is True  # the mark the ended track left

        # The same day, a journey asks for an alert: the held one of the morning, which sales never saw,
        # takes nothing (it was merged into it), and the task reaches the CRM.
        clock.advance(3600)
        after = await sales.RequestTask(crm_sync_pb2.TaskRequest(
            dedupe_key="l:alert:after", lead_id=lead_id, kind="sales_alert", title="Customer on the upgrade page",
            priority="high"), timeout=5)
        await settle()
        assert not after.duplicate and len(_remote_tasks(emulator, crm_id)) == 1, "\n".join(await timeline(lead_id))
        assert not [s for s in await timeline(lead_id) if s.startswith("task_merged")]
        # The next day the rules' own alert goes too (the mark the track left holds nothing).
        clock.advance(86400 + 60)
        await bottom_funnel("bf-2")
        assert len(_remote_tasks(emulator, crm_id)) == 2, "\n".join(await timeline(lead_id))


@pytest.mark.parametrize("consent", [True, False], ids=["in_the_recycle_track", "without_email_consent"])
async def test_an_mql_sales_disqualified_is_not_told_to_the_crm_as_an_mql_again(
        settings: Settings, emulator: Emulator, consent: bool) -> None:
    """Seed 004's closed loop: an MQL sales disqualify is recycled (scoring's lifecycle stage `recycled`),
    and the CRM is told so (hs_lead_status RECYCLED) while keeping the lifecycle stage it has. Stages only
    moved forward, so the lead stayed an mql, and crm_sync told the CRM RECYCLED only while the lead's
    recycle track ran: a lead without email consent never enters that track, and was pushed as MQL again,
    over what sales had set. Fresh evidence re-qualifies it (its score rises through 50 again: MQL); a
    won deal makes it CUSTOMER."""
    async with _loop_mesh(settings, emulator) as m:
        score, crm, clock, settle = m.score, m.crm, m.clock, m.settle
        def remote(crm_id: str) -> tuple[str, str]:
            props = emulator.get(f"/crm/v3/objects/contacts/{crm_id}")["properties"]
            return str(props.get("lifecyclestage")), str(props.get("hs_lead_status"))

        t0 = clock.now()
        crm_id = str(emulator.post("/crm/v3/objects/contacts", {"properties": {"email": "max@example.com"}})["id"])
        reply = await crm.UpsertContacts(crm_sync_pb2.UpsertContactsRequest(
            contacts=[contact(crm_id, "max@example.com", t0, first_name="Max", jobtitle="nurse")]),
            metadata=AUTH, timeout=10)
        lead_id = reply.results[0].lead_id
        await score.UpsertLead(scoring_pb2.UpsertLeadRequest(
            id=lead_id, merge=True, fields_json=json.dumps({"consent": {"email": consent}})), timeout=5)
        # Bottom-funnel content, pricing, a webinar, an assessment and a checkout: 15 + 8 + 10 + 10 + 10 = 53.
        events = [("page_viewed", {"category": "bottom_funnel"}), ("page_viewed", {"category": "pricing"}),
                  ("webinar_attended", {}), ("assessment_completed", {"assessment": "points", "score": 71}),
                  ("checkout_started", {"cart_id": "c-max", "plan": "standard"})]
        await score.IngestEvents(scoring_pb2.IngestRequest(events=[scoring_pb2.Event(
            lead_id=lead_id, type=t, idempotency_key=f"max-{i}", properties_json=json.dumps(p))
            for i, (t, p) in enumerate(events)]), timeout=5)
        await settle()
        lead = await score.GetLead(scoring_pb2.GetLeadRequest(id=lead_id), timeout=5)
        assert (lead.lifecycle_stage, lead.score) == ("mql", 53)
        assert remote(crm_id) == ("marketingqualifiedlead", "MQL")

        act = crm_sync_pb2.Activity(activity_id="dq-max", crm_id=crm_id, kind="disqualification", reason="budget")
        act.modified_at.FromDatetime(t0)
        await crm.RecordActivity(crm_sync_pb2.RecordActivityRequest(activity=act), metadata=AUTH, timeout=5)
        await settle()
        lead = await score.GetLead(scoring_pb2.GetLeadRequest(id=lead_id), timeout=5)
        assert lead.lifecycle_stage == "recycled"
        assert remote(crm_id) == ("marketingqualifiedlead", "RECYCLED")

        # Quiet for two weeks the score decays below 50 (53 - 5); a bottom-funnel visit then takes it
        # through 50 again: an MQL again, in scoring and in the CRM.
        clock.advance(15 * 86400)
        await settle()
        lead = await score.GetLead(scoring_pb2.GetLeadRequest(id=lead_id), timeout=5)
        assert (lead.lifecycle_stage, lead.score) == ("recycled", 48)
        await score.IngestEvents(scoring_pb2.IngestRequest(events=[scoring_pb2.Event(
            lead_id=lead_id, type="page_viewed", idempotency_key="max-back",
            properties_json=json.dumps({"category": "bottom_funnel"}))]), timeout=5)
        await settle()
        lead = await score.GetLead(scoring_pb2.GetLeadRequest(id=lead_id), timeout=5)
        assert lead.lifecycle_stage == "mql"
        assert remote(crm_id) == ("marketingqualifiedlead", "MQL")

        deal = crm_sync_pb2.Deal(deal_id="d-max", crm_id=crm_id, stage="closed_won", amount=3000, currency="USD")
        deal.modified_at.FromDatetime(clock.now())
        await crm.ReportDeal(crm_sync_pb2.ReportDealRequest(deal=deal), metadata=AUTH, timeout=5)
        await settle()
        assert remote(crm_id) == ("customer", "CUSTOMER")


@pytest.mark.parametrize("consent", [False, True], ids=["without_email_consent", "in_the_recycle_track"])
async def test_sales_tasks_follow_the_recycled_stage_not_the_recycle_track(
        settings: Settings, emulator: Emulator, consent: bool) -> None:
    """The task holds follow the lead's stage (`recycled`, scoring's lifecycle.recycle), as the CRM's lead
    status does. They followed the recycle track: a lead without email consent never enters it, so after
    sales disqualified it its next bottom-funnel visit was a task for sales again; and a lead that
    re-qualifies while its track still runs had its new MQL's task held."""
    async with _loop_mesh(settings, emulator) as m:
        score, crm, clock, admins, settle = m.score, m.crm, m.clock, m.admins, m.settle
        async def ingest(*events: tuple[str, str, dict]) -> None:
            await score.IngestEvents(scoring_pb2.IngestRequest(events=[scoring_pb2.Event(
                lead_id=lead_id, type=t, idempotency_key=k, properties_json=json.dumps(p)) for k, t, p in events]),
                timeout=5)
            await settle()

        async def stage() -> str:
            return (await score.GetLead(scoring_pb2.GetLeadRequest(id=lead_id), timeout=5)).lifecycle_stage

        async def held() -> list[str]:
            reply = await admins[1].Timeline(common_pb2.TimelineRequest(lead_id=lead_id), timeout=5)
            return [i.summary for i in reply.items if i.type == "task_held"]

        t0 = clock.now()
        crm_id = str(emulator.post("/crm/v3/objects/contacts", {"properties": {"email": "ivo@example.com"}})["id"])
        reply = await crm.UpsertContacts(crm_sync_pb2.UpsertContactsRequest(
            contacts=[contact(crm_id, "ivo@example.com", t0, first_name="Ivo", jobtitle="nurse")]),
            metadata=AUTH, timeout=10)
        lead_id = reply.results[0].lead_id
        await score.UpsertLead(scoring_pb2.UpsertLeadRequest(
            id=lead_id, merge=True, fields_json=json.dumps({"consent": {"email": consent}})), timeout=5)
        # 15 + 8 + 10 + 10 + 10 = 53: an MQL (a sales alert and the MQL's follow-up for sales).
        await ingest(("i-0", "page_viewed", {"category": "bottom_funnel"}),
                     ("i-1", "page_viewed", {"category": "pricing"}), ("i-2", "webinar_attended", {}),
                     ("i-3", "assessment_completed", {"assessment": "points", "score": 71}),
                     ("i-4", "checkout_started", {"cart_id": "c-ivo", "plan": "standard"}))
        before = len(_remote_tasks(emulator, crm_id))
        assert before >= 1

        act = crm_sync_pb2.Activity(activity_id="dq-ivo", crm_id=crm_id, kind="disqualification", reason="budget")
        act.modified_at.FromDatetime(t0)
        await crm.RecordActivity(crm_sync_pb2.RecordActivityRequest(activity=act), metadata=AUTH, timeout=5)
        await settle()
        assert await stage() == "recycled"

        if not consent:
            # The next day a bottom-funnel visit (53 + 15 = 68, through no threshold): still recycled, and
            # sales, who turned the lead down, get no task for it.
            clock.advance(86400 + 60)
            await ingest(("i-5", "page_viewed", {"category": "bottom_funnel"}))
            assert await stage() == "recycled"
            assert len(_remote_tasks(emulator, crm_id)) == before
            assert [s for s in await held() if "sales_recycled" in s], await held()
        else:
            # Two quiet weeks decay the score below 50; a bottom-funnel visit takes it through 50 again
            # while the recycle track still runs: a new MQL, whose tasks reach sales.
            clock.advance(15 * 86400)
            await settle()
            await ingest(("i-5", "page_viewed", {"category": "bottom_funnel"}))
            assert await stage() == "mql"
            assert len(_remote_tasks(emulator, crm_id)) >= before + 1
            assert await held() == []


async def test_the_timeline_shows_a_won_deal_dated_ahead_of_the_clock_before_what_it_caused(
        settings: Settings, emulator: Emulator) -> None:
    """A CRM deal is dated by the CRM's modification time, which may run ahead of ours (sync.yaml's
    max_clock_skew_s). The lead's timeline (the gateway's, merged from the real services) put the deal's
    `opportunity_won` after the stage change and the journey's goal it caused, which are stamped with our
    clock. An event is shown at the time it claims but never after the platform recorded it."""
    async with _loop_mesh(settings, emulator) as m:
        scoring, journeys, running, score, crm, clock, settle = (
            m.scoring, m.journeys, m.crm_sync, m.score, m.crm, m.clock, m.settle)
        addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
        addrs.update(scoring_addr=scoring.address, journeys_addr=journeys.address, crm_sync_addr=running.address)
        app = create_app(settings.with_overrides(api_key="test-key", **addrs))
        for s in SERVICES:
            app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))
        t0 = clock.now()
        crm_id = str(emulator.post("/crm/v3/objects/contacts", {"properties": {"email": "ada@example.com"}})["id"])
        reply = await crm.UpsertContacts(crm_sync_pb2.UpsertContactsRequest(
            contacts=[contact(crm_id, "ada@example.com", t0, first_name="Ada", jobtitle="nurse")]),
            metadata=AUTH, timeout=10)
        lead_id = reply.results[0].lead_id
        await score.UpsertLead(scoring_pb2.UpsertLeadRequest(
            id=lead_id, merge=True, fields_json=json.dumps({"consent": {"email": True}})), timeout=5)
        await settle()
        ahead = clock.now() + timedelta(minutes=20)  # within the skew allowed
        deal = crm_sync_pb2.Deal(deal_id="d-ada", crm_id=crm_id, stage="closed_won", amount=3000, currency="USD")
        deal.modified_at.FromDatetime(ahead)
        await crm.ReportDeal(crm_sync_pb2.ReportDealRequest(deal=deal), metadata=AUTH, timeout=5)
        await settle()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            body = (await client.get(f"/v1/leads/{lead_id}/timeline",
                                     headers={"Authorization": "Bearer test-key"})).json()
        items = body["items"]
        [won] = [i for i in items if i["kind"] == "event" and i["type"] == "opportunity_won"]
        # What the win caused, stamped with our clock: the journeys' moves (the goal: converted, the
        # customer journey entered) and crm_sync's push of the new stage.
        later = [i for i in items if i["kind"] == "journey" and json.dumps(i).find("convert") >= 0]
        assert later, [(i["kind"], i["type"], i["at"]) for i in items]
        order = [(i["kind"], i["type"], i["at"]) for i in items]
        assert all(items.index(won) < items.index(i) for i in later), order
        assert won["details"]["occurred_at"] == times.rfc3339(ahead) and won["at"] <= later[0]["at"], order
