"""The journeys service over real gRPC with a real Redis, its own database, and small real servers for
the messaging and crm_sync contracts: enrolment from the bus, durable timers in virtual time,
explanations on the timeline, retries when messaging is down, versions and validation errors."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import grpc
import pytest

from nurture.api.common.v1 import common_pb2
from nurture.api.journeys.v1 import journeys_pb2
from nurture.busmessage import BusMessage, LeadSnapshot
from tests.conftest import free_port
from tests.integration.journeys.conftest import Mesh
from tests.integration.journeys.counters import assert_counters_equal_recount
from tests.integration.journeys.fakes import (
    advance,
    details,
    lead,
    publish,
    settle,
    start_fakes,
    timeline_summaries,
)

pytestmark = pytest.mark.anyio


async def test_segment_journey_runs_on_timers_and_explains_the_urgent_jump(mesh: Mesh) -> None:
    ana = lead("l-1", "skilled_professional")
    await publish(mesh.pub, mesh.clock, ana, "lead_created")
    await settle(mesh.admin)
    assert "l-1:skilled_professional:1:email_01:1.1" in mesh.rec.sent_keys()
    first = next(r for r in mesh.rec.sends if r.step == "email_01")
    assert first.template == "skilled_professional.email_01" and first.category == "nurture"
    assert json.loads(first.context_json)["subject"].startswith("Welcome")
    await advance(mesh.admin, mesh.clock, 3 * 86400 + 60)
    steps = [r.step for r in mesh.rec.sends if r.journey == "skilled_professional"]
    assert steps == ["email_01", "email_02", "email_03"]

    ana = lead("l-1", "skilled_professional", timeline="urgent")
    await publish(mesh.pub, mesh.clock, ana, "form_submitted", form="profile")
    await settle(mesh.admin)
    tl = await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="l-1"), timeout=5)
    summaries = timeline_summaries(tl)
    jump = [s for s in summaries if "jumped to decision stage" in s]
    said = "form_submitted attributes.timeline=urgent properties.timeline=None"   # the profile's, the form's
    assert jump and said in jump[0] and "matched rule urgent_timeline" in jump[0]
    assert all(i.kind == "journey" for i in tl.items)
    assert any(d.get("rule") == "urgent_timeline" for d in details(tl))
    assert mesh.rec.sends[-1].step == "email_15"

    reply = await mesh.stub.LeadJourneys(journeys_pb2.LeadJourneysRequest(lead_id="l-1"), timeout=5)
    by_journey = {e.journey: e for e in reply.enrollments}
    assert by_journey["skilled_professional"].stage == "decision"
    assert by_journey["skilled_professional"].status == "active"
    assert by_journey["skilled_professional"].HasField("next_step_at")
    assert by_journey["triggers"].status == "active"
    members = await mesh.stub.Members(journeys_pb2.MembersRequest(journey="skilled_professional", stage="decision"),
                                      timeout=5)
    assert list(members.lead_ids) == ["l-1"]
    with pytest.raises(grpc.aio.AioRpcError) as unknown:   # a stage no version has: unknown, not empty
        await mesh.stub.Members(journeys_pb2.MembersRequest(journey="skilled_professional", stage="nope"), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "no stage 'nope'" in unknown.value.details()

    # Conversion ends the segment journey at once.
    await publish(mesh.pub, mesh.clock, ana, "subscribed")
    await settle(mesh.admin)
    reply = await mesh.stub.LeadJourneys(journeys_pb2.LeadJourneysRequest(lead_id="l-1"), timeout=5)
    assert {e.journey: e.status for e in reply.enrollments}["skilled_professional"] == "completed"


async def test_messaging_down_means_retry_later_not_lost_nor_doubled(mesh: Mesh) -> None:
    port = mesh.messaging.port
    await mesh.messaging.stop(0)
    bo = lead("l-2", "family")
    await publish(mesh.pub, mesh.clock, bo, "lead_created")
    await settle(mesh.admin)
    assert mesh.rec.sends == []
    tl = await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="l-2"), timeout=5)
    assert any("will be retried" in s for s in timeline_summaries(tl))
    messaging, spare = await start_fakes(mesh.rec, messaging_port=port, crm_port=free_port())
    await spare.stop(0)
    mesh.messaging = messaging
    for _ in range(20):  # the channel may still be in its reconnect backoff: each retry is a minute later
        await advance(mesh.admin, mesh.clock, 120)
        if mesh.rec.sends:
            break
        await asyncio.sleep(0.25)
    keys = [k for k in mesh.rec.sent_keys() if ":family:" in k]
    assert keys == ["l-2:family:1:email_01:1.1"]
    # The runs that waited for messaging and the one that sent are counted once each, as recorded.
    cells = assert_counters_equal_recount(mesh.settings)
    assert sum(n for (j, _, step, m, status), n in cells.items()
               if (j, step, m, status) == ("family", "email_01", "run", "sent")) == 1


async def test_sales_task_and_webinar_reschedule(mesh: Mesh) -> None:
    cy = lead("l-3", "entrepreneur")
    await publish(mesh.pub, mesh.clock, cy, "lead_created")
    await publish(mesh.pub, mesh.clock, cy, "page_viewed", category="bottom_funnel")
    starts = mesh.clock.now() + timedelta(days=4)
    await publish(mesh.pub, mesh.clock, cy, "webinar_registered", webinar_id="w-9", starts_at=starts.isoformat())
    await settle(mesh.admin)
    assert [t.kind for t in mesh.rec.tasks] == ["sales_alert"]
    assert mesh.rec.tasks[0].dedupe_key == "l-3:triggers:1:bottom_funnel:1.1"
    webinar = [r for r in mesh.rec.sends if r.journey == "webinar"]
    assert [r.step for r in webinar] == ["email_01"] and webinar[0].category == "transactional"
    moved = starts + timedelta(days=2)
    await publish(mesh.pub, mesh.clock, cy, "webinar_rescheduled", webinar_id="w-9", starts_at=moved.isoformat())
    await settle(mesh.admin)
    reply = await mesh.stub.LeadJourneys(journeys_pb2.LeadJourneysRequest(lead_id="l-3"), timeout=5)
    web = next(e for e in reply.enrollments if e.journey == "webinar")
    assert web.instance == "w-9"
    assert web.next_step_at.ToDatetime().replace(tzinfo=starts.tzinfo) == moved - timedelta(days=1)


async def test_a_webinar_no_show_is_not_thanked_for_coming_three_days_later(mesh: Mesh) -> None:
    # The seed's "+3 Days: personalized outreach based on webinar engagement": the attended lead's
    # opens "You were with us at the webinar"; a no-show got that same email.
    came, missed = lead("l-wa"), lead("l-wn")
    starts = mesh.clock.now() + timedelta(days=2)
    for who in (came, missed):
        await publish(mesh.pub, mesh.clock, who, "webinar_registered", webinar_id="w-3", starts_at=starts.isoformat())
    await settle(mesh.admin)
    await advance(mesh.admin, mesh.clock, (starts - mesh.clock.now()).total_seconds() + 600)
    await publish(mesh.pub, mesh.clock, came, "webinar_attended", webinar_id="w-3")
    await advance(mesh.admin, mesh.clock, 3 * 86400 + 3600)
    sent = {who["id"]: [(r.step, r.template) for r in mesh.rec.sends if r.journey == "webinar"
                        and r.lead_id == who["id"]] for who in (came, missed)}
    assert sent["l-wa"][-1] == ("email_07", "webinar.email_07")
    assert sent["l-wn"][-2:] == [("email_05", "webinar.email_05"), ("email_07_no_show", "webinar.email_07_no_show")]


async def test_a_tool_users_lead_magnet_emails_know_it_came_through_the_tool(mesh: Mesh) -> None:
    # "Lead magnet download or tool usage": the emails thank a tool user for the tool (ctx.via), not
    # for a download it never made; a download's own category is what it carries.
    tool_user, reader = lead("l-tool"), lead("l-dl")
    await publish(mesh.pub, mesh.clock, tool_user, "page_viewed", category="tool", page="/tools/points")
    await publish(mesh.pub, mesh.clock, reader, "resource_downloaded", resource="g-7", category="country")
    await settle(mesh.admin)
    ctx = {r.lead_id: json.loads(r.context_json) for r in mesh.rec.sends if r.journey == "lead_magnet"}
    assert ctx["l-tool"]["via"] == "tool" and "resource" not in ctx["l-tool"]
    assert ctx["l-dl"]["via"] == "country" and ctx["l-dl"]["resource"] == "g-7"


async def test_definitions_versions_and_validation(mesh: Mesh) -> None:
    listed = await mesh.stub.ListJourneys(journeys_pb2.ListJourneysRequest(), timeout=5)
    assert len(listed.journeys) == 14 and all(j.published_version == 1 for j in listed.journeys)
    got = await mesh.stub.GetJourney(journeys_pb2.GetJourneyRequest(key="lead_magnet"), timeout=5)
    doc = json.loads(got.definition_json)
    bad = {**doc, "steps": [*doc["steps"], {"id": "stray", "type": "jump", "to": "nowhere"}]}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.stub.PutJourney(journeys_pb2.PutJourneyRequest(key="lead_magnet", definition_json=json.dumps(bad)),
                                   timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    body = json.loads(err.value.details())
    assert "step stray: unreachable" in body["details"]["problems"]
    assert "step stray: to goes to unknown step 'nowhere'" in body["details"]["problems"]

    # A lead inside v1, then v2 published with a migration mapping.
    dee = lead("l-4", "family")
    await publish(mesh.pub, mesh.clock, dee, "resource_downloaded", resource="guide")
    await settle(mesh.admin)
    new = json.loads(json.dumps(doc))
    for s in new["steps"]:
        if s["id"] == "wait_02":
            s["delay"] = "2d"
    put = await mesh.stub.PutJourney(journeys_pb2.PutJourneyRequest(key="lead_magnet", definition_json=json.dumps(new)),
                                     timeout=5)
    assert put.version == 2
    dry = await mesh.stub.Publish(journeys_pb2.PublishRequest(key="lead_magnet", version=2, migrate=True,
                                                              dry_run=True), timeout=5)
    assert json.loads(dry.report_json)["would_move"] == {"v1:email_02->email_02": 1}
    reply = await mesh.stub.LeadJourneys(journeys_pb2.LeadJourneysRequest(lead_id="l-4"), timeout=5)
    assert {e.journey: e.version for e in reply.enrollments}["lead_magnet"] == 1
    await mesh.stub.Publish(journeys_pb2.PublishRequest(key="lead_magnet", version=2, migrate=True), timeout=5)
    reply = await mesh.stub.LeadJourneys(journeys_pb2.LeadJourneysRequest(lead_id="l-4"), timeout=5)
    assert {e.journey: e.version for e in reply.enrollments}["lead_magnet"] == 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.stub.GetJourney(journeys_pb2.GetJourneyRequest(key="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    analytics = json.loads((await mesh.stub.Analytics(journeys_pb2.AnalyticsRequest(key="lead_magnet"),
                                                      timeout=5)).report_json)
    assert analytics["enrolled"] == 1 and analytics["steps"][0]["sent"] == 1
    sim = json.loads((await mesh.stub.Simulate(journeys_pb2.SimulateRequest(request_json=json.dumps(
        {"journeys": ["lead_magnet"], "leads": 50, "days": 20, "seed": 2})), timeout=30)).report_json)
    assert sim["journeys"]["lead_magnet"]["steps"][0]["step"] == "email_01"


async def test_crm_down_side_task_is_retried_once_back(mesh: Mesh) -> None:
    port = mesh.crm.port
    await mesh.crm.stop(0)
    ed = lead("l-5", "skilled_professional")
    await publish(mesh.pub, mesh.clock, ed, "lead_created")
    await publish(mesh.pub, mesh.clock, ed, "page_viewed", category="bottom_funnel")
    await settle(mesh.admin)
    assert mesh.rec.tasks == []
    spare, crm = await start_fakes(mesh.rec, messaging_port=free_port(), crm_port=port)
    await spare.stop(0)
    mesh.crm = crm
    for _ in range(20):
        await advance(mesh.admin, mesh.clock, 120)
        if mesh.rec.tasks:
            break
        await asyncio.sleep(0.25)
    assert [t.dedupe_key for t in mesh.rec.tasks] == ["l-5:triggers:1:bottom_funnel:1.1"]
    await advance(mesh.admin, mesh.clock, 3600)
    assert len(mesh.rec.tasks) == 1


async def test_inactivity_re_engages_pausing_the_segment_then_erasure_removes_everything(mesh: Mesh) -> None:
    fay = lead("l-6", "family")
    await publish(mesh.pub, mesh.clock, fay, "lead_created")
    await settle(mesh.admin)
    first = next(r for r in mesh.rec.sends if r.lead_id == "l-6")
    # An open attributed by message id only (messaging's tracking event) reaches analytics.
    opened = await publish(mesh.pub, mesh.clock, fay, "email_opened", message_id=mesh.rec.delivered[first.dedupe_key])
    await settle(mesh.admin)
    report = json.loads((await mesh.stub.Analytics(journeys_pb2.AnalyticsRequest(key="family"), timeout=5)).report_json)
    assert report["steps"][0]["step"] == "email_01" and report["steps"][0]["opened"] == 1

    await advance(mesh.admin, mesh.clock, 15 * 86400)
    reply = await mesh.stub.LeadJourneys(journeys_pb2.LeadJourneysRequest(lead_id="l-6"), timeout=5)
    status = {e.journey: e.status for e in reply.enrollments}
    # Re-engagement is the segment journey's branch for a dormant lead: the segment waits meanwhile.
    assert status["re_engagement"] == "active" and status["family"] == "paused"
    tl = await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="l-6"), timeout=5)
    # Fourteen quiet days: no engagement (re_engagement's own entry) and no email opened since the one
    # open (the trigger table's no_opens_14d); the clocks run out at the same instant, either explains it.
    entered = [s for s in timeline_summaries(tl) if s.startswith("re_engagement: e")]
    assert entered and ("inactivity days=14" in entered[0] and ("matched rule inactive_14d" in entered[0]
                                                                 or "matched rule no_opens_14d" in entered[0])), entered
    assert any("family: paused while re_engagement runs" in s for s in timeline_summaries(tl))

    # The open delivered again (the same bus message) is in the record once, and counted once.
    await mesh.pub.publish([BusMessage(id=opened, lead_id="l-6", type="email_opened",
                                       properties={"message_id": mesh.rec.delivered[first.dedupe_key]},
                                       occurred_at=mesh.clock.now().isoformat(), lead=LeadSnapshot.from_dict(fay))])
    await settle(mesh.admin)
    cells = assert_counters_equal_recount(mesh.settings)
    opens = [n for (j, _, _, m, kind), n in cells.items() if (j, m, kind) == ("family", "engagement", "email_opened")]
    assert sum(opens) == 1

    await publish(mesh.pub, mesh.clock, fay, "lead_erased")
    await settle(mesh.admin)
    # The erased lead's records are gone and so are their counts (no other lead ran: nothing left).
    report = json.loads((await mesh.stub.Analytics(journeys_pb2.AnalyticsRequest(key="family"), timeout=5)).report_json)
    assert report["enrolled"] == 0 and report["steps"] == []
    reply = await mesh.stub.LeadJourneys(journeys_pb2.LeadJourneysRequest(lead_id="l-6"), timeout=5)
    assert list(reply.enrollments) == []
    tl = await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="l-6"), timeout=5)
    assert list(tl.items) == []
    before = len(mesh.rec.sends)
    await advance(mesh.admin, mesh.clock, 10 * 86400)
    assert not [r for r in mesh.rec.sends[before:] if r.lead_id == "l-6"]


async def test_a_new_journey_is_data_only_and_updates_the_lead(mesh: Mesh) -> None:
    from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
    from nurture.rpc import start_server
    from tests.conftest import MESH_TOKEN

    updates: list[scoring_pb2.UpsertLeadRequest] = []

    class FakeScoring(scoring_pb2_grpc.ScoringServicer):
        async def UpsertLead(self, request: scoring_pb2.UpsertLeadRequest, context: object) -> object:
            updates.append(request)
            return scoring_pb2.UpsertLeadReply(lead=scoring_pb2.Lead(id=request.id), created=False)

    def register(server: grpc.aio.Server) -> list[str]:
        scoring_pb2_grpc.add_ScoringServicer_to_server(FakeScoring(), server)
        return []

    port = int(mesh.settings.scoring_addr.rsplit(":", 1)[1])
    scoring = await start_server(name="fake-scoring", port=port, register=register, mesh_tokens=[MESH_TOKEN])
    try:
        doc = {"key": "vip_welcome", "name": "VIP welcome", "kind": "engagement", "priority": 65,
               "entry": [{"name": "vip", "events": ["form_submitted"],
                          "when": {"fact": "event.properties.form", "eq": "vip"}}],
               "stages": [{"id": "vip", "name": "VIP"}],
               "steps": [{"id": "tag", "type": "update", "set": {"vip": True}, "stage": "vip"},
                         {"id": "email_01", "type": "send", "subject": "Welcome, VIP"},
                         {"id": "pick", "type": "branch", "default": "done",
                          "rules": [{"name": "hot", "when": {"fact": "lead.score", "gte": 50}, "next": "call"}]},
                         {"id": "call", "type": "task", "kind": "consultation", "title": "Call the VIP",
                          "next": "done"},
                         {"id": "done", "type": "end"}]}
        put = await mesh.stub.PutJourney(journeys_pb2.PutJourneyRequest(key="vip_welcome",
                                                                        definition_json=json.dumps(doc)), timeout=5)
        await mesh.stub.Publish(journeys_pb2.PublishRequest(key="vip_welcome", version=put.version), timeout=5)
        gus = {**lead("l-7", "entrepreneur"), "score": 72}
        await publish(mesh.pub, mesh.clock, gus, "form_submitted", form="vip")
        await settle(mesh.admin)
    finally:
        await scoring.stop(0)
    assert [(u.id, json.loads(u.fields_json), u.merge) for u in updates] == [
        ("l-7", {"attributes": {"vip": True}}, True)]
    assert "l-7:vip_welcome:1:email_01:1.1" in mesh.rec.sent_keys()
    assert [t.dedupe_key for t in mesh.rec.tasks] == ["l-7:vip_welcome:1:call:1.1"]
    tl = await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="l-7"), timeout=5)
    assert any("branch pick took call: score=72 matched rule hot" in s for s in timeline_summaries(tl))
