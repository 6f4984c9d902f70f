"""Website visitors on a real scoring service: anonymous events kept and scored apart from leads (none
reaches the bus), identification merging them into the lead exactly once and in order (retries, a
crash between the ingest and the end of the merge, two devices of one person), progressive forms."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import redis

from nurture import busmessage
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.bus import stream_key
from nurture.service import Running
from nurture.settings import Settings
from services.scoring.app import visitors as visitors_app
from tests.conftest import mesh_channel

pytestmark = pytest.mark.anyio

DEVICE_A = "devicea-0123456789abcdef"
DEVICE_B = "deviceb-0123456789abcdef"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
async def stub(scoring: Running) -> AsyncIterator[scoring_pb2_grpc.ScoringStub]:
    async with mesh_channel(scoring.address) as ch:
        yield scoring_pb2_grpc.ScoringStub(ch)


def page(n: int, category: str, at: datetime, path: str = "") -> scoring_pb2.VisitorEvent:
    ev = scoring_pb2.VisitorEvent(type="page_viewed", client_id=f"e{n}",
                                  properties_json=json.dumps({"category": category, "page": path or f"/{category}"}))
    ev.occurred_at.FromDatetime(at)
    return ev


async def collect(stub: scoring_pb2_grpc.ScoringStub, visitor: str, *events: scoring_pb2.VisitorEvent
                  ) -> scoring_pb2.VisitResult:
    reply = await stub.CollectVisitorEvents(scoring_pb2.CollectRequest(visits=[
        scoring_pb2.Visit(visitor_id=visitor, events=list(events))]))
    return reply.visits[0]


async def published(settings: Settings, lead_id: str, merges: int) -> list[busmessage.BusMessage]:
    """The lead's bus messages once its `merges` merge notes are out (scoring publishes after it
    answers; a merge's note is its last message, and a lead's messages go out in commit order)."""
    for _ in range(500):
        found = bus_of(settings, lead_id)
        if sum(m.type == visitors_app.MERGED_EVENT for m in found) >= merges:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"{lead_id}: {merges} merge notes never reached the bus")


def bus_of(settings: Settings, lead_id: str) -> list[busmessage.BusMessage]:
    client = redis.Redis.from_url(settings.redis_url)
    out = [busmessage.decode(fields[b"m"]) for shard in range(settings.bus_shards)
           for _id, fields in client.xrange(stream_key(shard))]
    client.close()
    return [m for m in out if m.lead_id == lead_id]


async def test_anonymous_events_are_scored_apart_and_reach_no_consumer(
        stub: scoring_pb2_grpc.ScoringStub, settings: Settings) -> None:
    got = await collect(stub, DEVICE_A, page(1, "pricing", T0), page(2, "country", T0 + timedelta(minutes=1)))
    assert not got.known and [r.error_code for r in got.results] == ["", ""]
    again = await collect(stub, DEVICE_A, page(1, "pricing", T0))  # the snippet's retry of the same event
    assert again.results[0].duplicate
    visitor = await stub.GetVisitor(scoring_pb2.VisitorRequest(visitor_id=DEVICE_A))
    assert visitor.lead_id == "" and visitor.anonymous_events == 2
    # A duplicate is the same visitor's id only: in one call, another visitor's event with an id the first
    # used is new, and the first's resend among new events is still its duplicate.
    both = await stub.CollectVisitorEvents(scoring_pb2.CollectRequest(visits=[
        scoring_pb2.Visit(visitor_id=DEVICE_B, events=[page(2, "country", T0)]),
        scoring_pb2.Visit(visitor_id=DEVICE_A, events=[page(3, "education", T0), page(2, "country", T0)])]))
    assert [[r.duplicate for r in v.results] for v in both.visits] == [[False], [False, True]]
    assert (await stub.GetVisitor(scoring_pb2.VisitorRequest(visitor_id=DEVICE_A))).anonymous_events == 3
    assert visitor.profile.id == f"visitor:{DEVICE_A}" and visitor.profile.email == ""
    assert visitor.profile.score > 0  # the live model scored the pricing page
    assert bus_of(settings, f"visitor:{DEVICE_A}") == []
    client = redis.Redis.from_url(settings.redis_url)
    assert all(client.xlen(stream_key(s)) == 0 for s in range(settings.bus_shards))
    client.close()


async def test_identification_merges_the_history_once_in_order_and_explains_it(
        stub: scoring_pb2_grpc.ScoringStub, scoring: Running, settings: Settings) -> None:
    categories = ["education", "country", "pricing", "pricing"]
    await collect(stub, DEVICE_A, *[page(i, c, T0 + timedelta(minutes=i)) for i, c in enumerate(categories)])
    anonymous = (await stub.GetVisitor(scoring_pb2.VisitorRequest(visitor_id=DEVICE_A))).profile.score

    fields = json.dumps({"email": "Ana@Example.com", "first_name": "Ana"})
    first = await stub.IdentifyVisitor(scoring_pb2.IdentifyVisitorRequest(visitor_id=DEVICE_A, fields_json=fields))
    assert first.created and first.merged == 4
    retry = await stub.IdentifyVisitor(scoring_pb2.IdentifyVisitorRequest(visitor_id=DEVICE_A, fields_json=fields))
    assert retry.lead_id == first.lead_id and not retry.created and retry.merged == 0

    lead = await stub.GetLead(scoring_pb2.GetLeadRequest(id=first.lead_id))
    # The domain of an address is stored in lower case (email-validator normalises it at lead creation).
    assert lead.email == "Ana@example.com" and lead.score == anonymous  # as if it had been known
    on_bus = [m for m in await published(settings, first.lead_id, 1) if m.type not in ("lead_created", "lead_updated")]
    pages = [m for m in on_bus if m.type == "page_viewed"]
    assert [m.properties["category"] for m in pages] == categories  # once each, in order
    assert [m.occurred_at for m in pages] == sorted(m.occurred_at for m in pages)
    notes = [m for m in on_bus if m.type == visitors_app.MERGED_EVENT]
    assert len(notes) == 1 and notes[0].properties["events"] == 4
    assert notes[0].properties["note"] == f"merged 4 anonymous events from visitor {DEVICE_A}"

    # After identification the visitor's events go straight to the lead.
    later = await collect(stub, DEVICE_A, page(9, "high_intent", T0 + timedelta(hours=1)))
    assert later.known and later.results[0].event_id and not later.results[0].duplicate
    visitor = await stub.GetVisitor(scoring_pb2.VisitorRequest(visitor_id=DEVICE_A))
    assert visitor.lead_id == first.lead_id and visitor.anonymous_events == 0


async def test_two_devices_of_one_person_merge_into_one_lead(stub: scoring_pb2_grpc.ScoringStub,
                                                            settings: Settings) -> None:
    await collect(stub, DEVICE_A, page(1, "pricing", T0))
    day2 = T0 + timedelta(days=1)
    await collect(stub, DEVICE_B, page(1, "country", day2), page(2, "education", day2 + timedelta(minutes=1)))
    one = await stub.IdentifyVisitor(scoring_pb2.IdentifyVisitorRequest(
        visitor_id=DEVICE_A, fields_json=json.dumps({"email": "two@example.com"})))
    two = await stub.IdentifyVisitor(scoring_pb2.IdentifyVisitorRequest(
        visitor_id=DEVICE_B, fields_json=json.dumps({"email": "TWO@example.com"})))
    assert one.lead_id == two.lead_id and (one.merged, two.merged) == (1, 2) and not two.created
    on_bus = await published(settings, one.lead_id, 2)
    pages = [m.properties["category"] for m in on_bus if m.type == "page_viewed"]
    assert pages == ["pricing", "country", "education"]
    notes = {m.properties["visitor"] for m in on_bus if m.type == visitors_app.MERGED_EVENT}
    assert notes == {DEVICE_A, DEVICE_B}

    # Erasing the person erases the browsers that became them.
    await stub.EraseLead(scoring_pb2.EraseRequest(id=one.lead_id))
    for device in (DEVICE_A, DEVICE_B):
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await stub.GetVisitor(scoring_pb2.VisitorRequest(visitor_id=device))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_merge_cut_short_after_its_ingest_completes_exactly_once(
        stub: scoring_pb2_grpc.ScoringStub, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    await collect(stub, DEVICE_A, page(1, "pricing", T0), page(2, "country", T0 + timedelta(minutes=1)))
    real = visitors_app.Visitors.mark_merged
    calls = {"n": 0}

    def dies_once(self: visitors_app.Visitors, *args: Any) -> bool:
        calls["n"] += 1
        if calls["n"] == 1:  # the process "dies" after the history was ingested, before the merge is marked
            raise RuntimeError("crash before the merge was marked")
        return real(self, *args)

    monkeypatch.setattr(visitors_app.Visitors, "mark_merged", dies_once)
    fields = json.dumps({"email": "cut@example.com"})
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.IdentifyVisitor(scoring_pb2.IdentifyVisitorRequest(visitor_id=DEVICE_A, fields_json=fields))
    # Meanwhile the visitor is linked: a new event goes to the lead and finishes the merge first.
    later = await collect(stub, DEVICE_A, page(3, "high_intent", T0 + timedelta(minutes=2)))
    assert later.known
    retry = await stub.IdentifyVisitor(scoring_pb2.IdentifyVisitorRequest(visitor_id=DEVICE_A, fields_json=fields))
    assert retry.merged == 0
    on_bus = await published(settings, retry.lead_id, 1)
    for _ in range(500):  # the later event, ingested after the merge, goes out after its note
        if sum(m.type == "page_viewed" for m in on_bus) >= 3:
            break
        await asyncio.sleep(0.01)
        on_bus = bus_of(settings, retry.lead_id)
    pages = [m.properties["category"] for m in on_bus if m.type == "page_viewed"]
    assert pages == ["pricing", "country", "high_intent"]
    assert sum(m.type == visitors_app.MERGED_EVENT for m in on_bus) == 1


async def test_a_signed_link_identifies_a_known_lead_and_forms_ask_what_is_unknown(
        stub: scoring_pb2_grpc.ScoringStub) -> None:
    made = await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(id="ana", fields_json=json.dumps(
        {"email": "ana@example.com", "attributes": {"profession": "nurse"}})))
    assert made.created
    fields = await stub.NextFormFields(scoring_pb2.NextFieldsRequest(visitor_id=DEVICE_A))
    assert [f.key for f in fields.fields] == ["email", "first_name"]
    kept = await stub.SubmitForm(scoring_pb2.SubmitFormRequest(visitor_id=DEVICE_A, answers_json=json.dumps(
        {"first_name": "Ana", "countries_of_interest": ["CA"]})))
    assert kept.lead_id == "" and kept.stored == 2
    fields = await stub.NextFormFields(scoring_pb2.NextFieldsRequest(visitor_id=DEVICE_A, limit=3))
    assert [f.key for f in fields.fields] == ["email", "profession", "moving_with_family"]

    await collect(stub, DEVICE_A, page(1, "pricing", T0))
    linked = await stub.IdentifyVisitor(scoring_pb2.IdentifyVisitorRequest(visitor_id=DEVICE_A, lead_id="ana"))
    assert linked.lead_id == "ana" and linked.merged == 1
    lead = await stub.GetLead(scoring_pb2.GetLeadRequest(id="ana"))
    attrs = json.loads(lead.attributes_json)
    assert lead.first_name == "Ana" and attrs["countries_of_interest"] == ["CA"] and attrs["profession"] == "nurse"
    fields = await stub.NextFormFields(scoring_pb2.NextFieldsRequest(visitor_id=DEVICE_A))
    assert [f.key for f in fields.fields] == ["moving_with_family", "timeline"]

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.SubmitForm(scoring_pb2.SubmitFormRequest(visitor_id=DEVICE_A, answers_json=json.dumps(
            {"timeline": "someday", "family_size": 0, "shoe_size": 44})))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = json.loads(bad.value.details())["details"]["fields"]
    assert set(details) == {"timeline", "family_size", "shoe_size"}
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.IdentifyVisitor(scoring_pb2.IdentifyVisitorRequest(visitor_id=DEVICE_B, lead_id="nobody"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
