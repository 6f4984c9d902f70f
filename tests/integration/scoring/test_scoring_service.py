"""The scoring service over real gRPC, with a real Redis and its own database."""

from __future__ import annotations

import json
from datetime import timedelta

import grpc
import pytest
import redis
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nurture import busmessage
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.bus import stream_key
from nurture.busmessage import BusMessage
from nurture.clock import VirtualClock
from nurture.service import Running
from nurture.settings import Settings
from tests.conftest import mesh_channel

pytestmark = pytest.mark.anyio


def stubs(running: Running) -> tuple[scoring_pb2_grpc.ScoringStub, common_pb2_grpc.AdminStub, grpc.aio.Channel]:
    channel = mesh_channel(running.address)
    return scoring_pb2_grpc.ScoringStub(channel), common_pb2_grpc.AdminStub(channel), channel


def bus_messages(settings: Settings) -> list[BusMessage]:
    client = redis.Redis.from_url(settings.redis_url)
    out = []
    for shard in range(settings.bus_shards):
        for _id, fields in client.xrange(stream_key(shard)):
            out.append(busmessage.decode(fields[b"m"]))
    return out


def event(lead_id: str, type_: str, key: str = "", **props: object) -> scoring_pb2.Event:
    return scoring_pb2.Event(lead_id=lead_id, type=type_, properties_json=json.dumps(props), idempotency_key=key)


async def test_seed_triggers_score_and_publish(scoring: Running, settings: Settings) -> None:
    stub, admin, channel = stubs(scoring)
    async with channel:
        reply = await stub.UpsertLead(
            scoring_pb2.UpsertLeadRequest(
                id="l-1",
                fields_json=json.dumps(
                    {
                        "email": "ana@example.com",
                        "first_name": "Ana",
                        "consent": {"email": True},
                        "attributes": {"profession": "nurse", "countries_of_interest": ["CA"]},
                    }
                ),
            ),
            timeout=5,
        )
        assert (
            reply.created and reply.lead.segment == "skilled_professional" and reply.lead.grade == "B"
        )  # 10 + 10 + 5 fit points
        events = [
            event("l-1", "page_viewed", "k1", category="pricing"),
            *[event("l-1", "resource_downloaded", f"d{i}") for i in range(3)],
            event("l-1", "video_watched", category="demo"),
            event("l-1", "page_viewed", category="high_intent"),
            event("l-1", "page_viewed", category="high_intent"),
            event("l-1", "page_viewed", category="bottom_funnel"),
        ]
        result = await stub.IngestEvents(scoring_pb2.IngestRequest(events=events), timeout=5)
        assert all(not r.error_code for r in result.results)
        lead = await stub.GetLead(scoring_pb2.GetLeadRequest(id="l-1"), timeout=5)
        # 8 pricing + 3x2 downloads + 10 third download + 7 demo + 12 repeated high intent + 15 bottom funnel
        # + 5 burst (5th interaction within 24 h)
        assert lead.score == 8 + 6 + 10 + 7 + 12 + 15 + 5
        assert lead.lifecycle_stage == "mql"
        history = await stub.ScoreHistory(scoring_pb2.ScoreHistoryRequest(lead_id="l-1"), timeout=5)
        rules = [c.rule for c in history.changes]
        assert {
            "pricing_page",
            "three_resource_downloads",
            "demo_video",
            "repeated_high_intent",
            "bottom_funnel",
        } <= set(rules)
        again = await stub.IngestEvents(
            scoring_pb2.IngestRequest(events=[event("l-1", "page_viewed", "k1")]), timeout=5
        )
        assert again.results[0].duplicate and again.results[0].event_id == result.results[0].event_id
        await admin.Settle(common_pb2.SettleRequest(), timeout=5)
        messages = bus_messages(settings)
        bottom = [
            m for m in messages if m.type == "page_viewed" and m.properties.get("category") == "bottom_funnel"
        ]
        assert bottom and "sales_alert" in bottom[0].signals
        assert any(m.type == "stage_changed" and m.properties["new"] == "mql" for m in messages)
        assert len({m.id for m in messages}) == len(messages)
        timeline = await admin.Timeline(common_pb2.TimelineRequest(lead_id="l-1"), timeout=5)
        assert any(i.kind == "score" and "bottom_funnel" in i.summary for i in timeline.items)


async def test_segment_read_from_behaviour_is_announced_as_a_profile_change(scoring: Running,
                                                                           settings: Settings) -> None:
    # No profile clues, then funding content (no points, so no score_changed): the segment journeys
    # hear of the new segment only through lead_updated.
    stub, admin, channel = stubs(scoring)
    async with channel:
        await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(
            id="seg-1", fields_json=json.dumps({"email": "s@example.com", "consent": {"email": True}})), timeout=5)
        await stub.IngestEvents(scoring_pb2.IngestRequest(
            events=[event("seg-1", "page_viewed", category="funding")]), timeout=5)
        await stub.IngestEvents(scoring_pb2.IngestRequest(
            events=[event("seg-1", "page_viewed", category="education")]), timeout=5)
        await admin.Settle(common_pb2.SettleRequest(), timeout=5)
        lead = await stub.GetLead(scoring_pb2.GetLeadRequest(id="seg-1"), timeout=5)
        assert lead.segment == "entrepreneur"
        updates = [m for m in bus_messages(settings) if m.lead_id == "seg-1" and m.type == "lead_updated"]
        assert [(m.properties["changed"], m.lead.segment) for m in updates] == [(["segment"], "entrepreneur")]



async def test_consent_an_event_gives_or_withdraws_is_announced_as_a_profile_change(scoring: Running,
                                                                                  settings: Settings) -> None:
    # An explicit opt-in by the event (`subscribed`, channel email) gives a lead without consent its email
    # consent; the segment journeys enter on lead_updated, and a new user's lead that opted in this way
    # was never welcomed (only the event, no score change, went out). An unsubscribe takes it back.
    stub, admin, channel = stubs(scoring)
    async with channel:
        await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(
            id="opt-1", fields_json=json.dumps({"email": "o@example.com", "segment": "family"})), timeout=5)
        await stub.IngestEvents(scoring_pb2.IngestRequest(
            events=[event("opt-1", "subscribed", channel="email")]), timeout=5)
        await stub.IngestEvents(scoring_pb2.IngestRequest(
            events=[event("opt-1", "subscribed", channel="email")]), timeout=5)   # no change: nothing more
        await stub.IngestEvents(scoring_pb2.IngestRequest(
            events=[event("opt-1", "unsubscribed", scope="all")]), timeout=5)
        await admin.Settle(common_pb2.SettleRequest(), timeout=5)
        updates = [m for m in bus_messages(settings) if m.lead_id == "opt-1" and m.type == "lead_updated"]
        assert [(m.properties["changed"], m.properties["source"], m.lead.consent.get("email")) for m in updates] \
            == [(["consent"], "behaviour", True), (["consent"], "behaviour", False)]

async def test_bad_input_is_rejected_per_event(scoring: Running) -> None:
    stub, _admin, channel = stubs(scoring)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.UpsertLead(
                scoring_pb2.UpsertLeadRequest(
                    id="x",
                    fields_json=json.dumps(
                        {"email": "not-an-email", "segment": "martians", "timezone": "Mars/Olympus"}
                    ),
                ),
                timeout=5,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(json.loads(err.value.details())["details"]["fields"]) == {"email", "segment", "timezone"}
        # Sizes a record can sensibly have: names go into mail headers, the lead rides on every bus message.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(id="big", fields_json=json.dumps(
                {"first_name": "A" * 50_000, "attributes": {"bio": "x" * 70_000, "ok": "fine"}})), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(json.loads(err.value.details())["details"]["fields"]) == {"first_name", "attributes.bio"}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(id="big", fields_json=json.dumps(
                {"attributes": {f"a{i}": "x" * 60_000 for i in range(5)}})), timeout=5)
        assert set(json.loads(err.value.details())["details"]["fields"]) == {"attributes"}
        await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(id="ok", fields_json="{}"), timeout=5)
        result = await stub.IngestEvents(
            scoring_pb2.IngestRequest(
                events=[
                    event("ok", "page_viewed"),
                    event("nobody", "page_viewed"),
                    event("ok", "Bad Type"),
                    scoring_pb2.Event(lead_id="ok", type="form_submitted", properties_json="[1]"),
                ]
            ),
            timeout=5,
        )
        codes = [r.error_code for r in result.results]
        assert codes == ["", "unknown_lead", "invalid", "invalid"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.UpsertLead(
                scoring_pb2.UpsertLeadRequest(id="ghost", fields_json="{}", must_exist=True), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_inactivity_decays_and_announces_lapse(scoring: Running, settings: Settings) -> None:
    stub, admin, channel = stubs(scoring)
    clock = VirtualClock(redis.Redis.from_url(settings.redis_url))
    async with channel:
        await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(id="q", fields_json="{}"), timeout=5)
        await stub.IngestEvents(scoring_pb2.IngestRequest(events=[event("q", "form_submitted")]), timeout=5)
        settle = await admin.Settle(common_pb2.SettleRequest(), timeout=5)
        assert settle.has_next_due
        due = settle.next_due_at.ToDatetime()
        assert due - clock.now().replace(tzinfo=None) == timedelta(days=14)
        clock.advance(14 * 86400)
        await admin.Settle(common_pb2.SettleRequest(), timeout=5)
        lead = await stub.GetLead(scoring_pb2.GetLeadRequest(id="q"), timeout=5)
        assert lead.score == 0  # 5 for the form, -5 decay
        lapsed = [m for m in bus_messages(settings) if m.type == "engagement_lapsed"]
        assert len(lapsed) == 1 and lapsed[0].properties["days_inactive"] == 14


async def test_a_lapse_sweep_with_work_is_a_trace_of_its_own(scoring: Running, settings: Settings,
                                                             spans: InMemorySpanExporter) -> None:
    """Leads that went quiet are decayed in a `lapses due` span (a Settle's child here, a root under the
    real clock's sweep), so the decay's SQL and the `engagement_lapsed` it announces can be followed; a
    sweep with nothing due records no such span."""
    stub, admin, channel = stubs(scoring)
    clock = VirtualClock(redis.Redis.from_url(settings.redis_url))
    async with channel:
        await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(id="qt", fields_json="{}"), timeout=5)
        await stub.IngestEvents(scoring_pb2.IngestRequest(events=[event("qt", "form_submitted")]), timeout=5)
        await admin.Settle(common_pb2.SettleRequest(), timeout=5)
        spans.clear()
        await admin.Settle(common_pb2.SettleRequest(), timeout=5)
        assert not [s for s in spans.get_finished_spans() if s.name == "lapses due"]
        clock.advance(14 * 86400)
        await admin.Settle(common_pb2.SettleRequest(), timeout=5)
    finished = spans.get_finished_spans()
    lapses = [s for s in finished if s.name == "lapses due"]
    assert len(lapses) == 1, [s.name for s in finished]
    inside = [s for s in finished if s.parent is not None and s.parent.span_id == lapses[0].context.span_id]
    statements = [st for s in inside if s.name == "sql transaction" for st in (s.attributes or {})["db.statements"]]
    assert any(st.startswith("INSERT scoring_outbox") for st in statements), statements


async def test_events_that_are_not_engagement_do_not_decay_the_same_quiet_period_again(
        scoring: Running, settings: Settings) -> None:
    # A quiet lead decays once at 14 days, then once a week; the re-engagement emails and CRM notes
    # that follow (not engagement) must not set the next decay back to the one already done.
    stub, admin, channel = stubs(scoring)
    clock = VirtualClock(redis.Redis.from_url(settings.redis_url))
    async with channel:
        await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(id="qq", fields_json="{}"), timeout=5)
        await stub.IngestEvents(scoring_pb2.IngestRequest(events=[
            event("qq", "form_submitted"), event("qq", "assessment_completed")]), timeout=5)   # 15 points
        await admin.Settle(common_pb2.SettleRequest(), timeout=5)
        clock.advance(14 * 86400)
        await admin.Settle(common_pb2.SettleRequest(), timeout=5)
        for _ in range(3):
            await stub.IngestEvents(scoring_pb2.IngestRequest(events=[event("qq", "email_sent")]), timeout=5)
            await admin.Settle(common_pb2.SettleRequest(), timeout=5)
        assert (await stub.GetLead(scoring_pb2.GetLeadRequest(id="qq"), timeout=5)).score == 10
        clock.advance(7 * 86400)
        await admin.Settle(common_pb2.SettleRequest(), timeout=5)
        await stub.IngestEvents(scoring_pb2.IngestRequest(events=[event("qq", "email_sent")]), timeout=5)
        await admin.Settle(common_pb2.SettleRequest(), timeout=5)
        assert (await stub.GetLead(scoring_pb2.GetLeadRequest(id="qq"), timeout=5)).score == 5


async def test_unsubscribe_withdraws_consent_with_audit(scoring: Running) -> None:
    stub, admin, channel = stubs(scoring)
    async with channel:
        await stub.UpsertLead(
            scoring_pb2.UpsertLeadRequest(
                id="u", fields_json=json.dumps({"email": "u@example.com", "consent": {"email": True}}), source="form"
            ),
            timeout=5,
        )
        await stub.IngestEvents(scoring_pb2.IngestRequest(events=[event("u", "unsubscribed")]), timeout=5)
        lead = await stub.GetLead(scoring_pb2.GetLeadRequest(id="u"), timeout=5)
        assert json.loads(lead.consent_json) == {"email": False}
        timeline = await admin.Timeline(common_pb2.TimelineRequest(lead_id="u"), timeout=5)
        assert [i.type for i in timeline.items if i.type.startswith("consent")] == [
            "consent_given",
            "consent_withdrawn",
        ]
