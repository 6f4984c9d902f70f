"""The scoring outbox on a real Redis and its own database: ingest publishes its committed rows from
memory and has them deleted by the next ingest (or the outbox loop after a quiet second); other
writes go through the sweep. Every message reaches the bus exactly once, in commit order per lead."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from nurture import busmessage, redisconn
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.bus import stream_key
from nurture.busmessage import BusMessage
from nurture.service import Running
from nurture.settings import Settings
from services.scoring.app.outbox import Outbox
from tests.conftest import mesh_channel, start_service

pytestmark = pytest.mark.anyio


@pytest.fixture
async def stub(scoring: Running) -> AsyncIterator[scoring_pb2_grpc.ScoringStub]:
    async with mesh_channel(scoring.address) as ch:
        yield scoring_pb2_grpc.ScoringStub(ch)


@pytest.fixture
def outbox_rows(settings: Settings) -> Any:
    """Reads the service's scoring_outbox table (seq, message id) through its own database URL."""
    engine = sa.create_engine(settings.database_url_for("scoring"))

    def read() -> list[tuple[int, str]]:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT seq, payload FROM scoring_outbox ORDER BY seq")).all()
        return [(seq, busmessage.decode(payload).id) for seq, payload in rows]

    yield read
    engine.dispose()


def bus(settings: Settings) -> list[BusMessage]:
    """Every message on the bus, shard by shard in stream order (one lead lives on one shard)."""
    client = redisconn.connect_sync(settings)  # a cluster's too, where the settings name one
    out = [busmessage.decode(fields[b"m"]) for shard in range(settings.bus_shards)
           for _id, fields in client.xrange(stream_key(shard))]
    client.close()
    return out


async def wait_for(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def event(lead_id: str, type_: str = "webinar_registered", **props: object) -> scoring_pb2.Event:
    return scoring_pb2.Event(lead_id=lead_id, type=type_, properties_json=json.dumps(props))


def assert_once_in_commit_order(messages: list[BusMessage]) -> dict[str, list[BusMessage]]:
    """No message twice; each lead's messages in commit order. Every write of a lead bumps its
    version and its messages carry the snapshot, so per lead the versions never go down."""
    ids = [m.id for m in messages]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1][:5]
    by_lead: dict[str, list[BusMessage]] = {}
    for m in messages:
        by_lead.setdefault(m.lead_id, []).append(m)
    for lead, ms in by_lead.items():
        versions = [m.lead.version for m in ms]
        assert versions == sorted(versions), (lead, [(m.type, m.lead.version) for m in ms])
    return by_lead


async def test_ingest_publishes_each_message_once_in_order_and_the_outbox_empties(
    scoring: Running, stub: scoring_pb2_grpc.ScoringStub, settings: Settings, outbox_rows: Any,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every ingest deletes what was published before it (by default it waits for 200 such rows).
    monkeypatch.setattr(Outbox, "DELETE_BATCH", 1)
    leads = [f"o{i}" for i in range(6)]
    await stub.UpsertLeads(scoring_pb2.UpsertLeadsRequest(
        leads=[scoring_pb2.UpsertLeadRequest(id=lead, fields_json="{}") for lead in leads]), timeout=5)
    await wait_for(lambda: len(bus(settings)) == len(leads))  # the sweep publishes lead_created
    await wait_for(lambda: not outbox_rows())  # and deletes what it sent

    # Concurrent calls (merged into group commits), each with events for several leads.
    calls = 30
    replies = await asyncio.gather(*[
        stub.IngestEvents(scoring_pb2.IngestRequest(
            events=[event(leads[(c + j) % len(leads)], n=c * 3 + j) for j in range(3)]), timeout=5)
        for c in range(calls)])
    event_ids = [r.event_id for reply in replies for r in reply.results]
    assert all(event_ids) and len(set(event_ids)) == calls * 3
    # Published from memory: no Settle (its sweep would publish what SQL holds and hide a loss).
    await wait_for(lambda: {m.id for m in bus(settings)} >= set(event_ids))
    messages = bus(settings)
    by_lead = assert_once_in_commit_order(messages)
    published = [m for m in messages if m.type == "webinar_registered"]
    assert sorted(m.id for m in published) == sorted(event_ids)
    for lead, ms in by_lead.items():
        # Within one lead, the events' properties show the order their calls' transactions ran in;
        # the versions say it was commit order, and each lead saw every one of its events.
        assert len([m for m in ms if m.type == "webinar_registered"]) == calls * 3 // len(leads), lead

    # The next ingest deletes the rows published since, in its own transaction: what is left in
    # SQL is at most that ingest's own rows (published, their delete waiting for the next one).
    before = {mid for _, mid in outbox_rows()}
    reply = await stub.IngestEvents(scoring_pb2.IngestRequest(events=[event(leads[0], n=-1)]), timeout=5)
    last = reply.results[0].event_id
    await wait_for(lambda: last in {m.id for m in bus(settings)})
    left = {mid for _, mid in outbox_rows()}
    assert not left & before
    assert all(mid.startswith(last) for mid in left), left
    # A quiet second later the outbox loop deletes those itself.
    await wait_for(lambda: not outbox_rows(), timeout=3)
    assert_once_in_commit_order(bus(settings))


async def test_the_quiet_second_empties_the_outbox_without_another_ingest(
    scoring: Running, stub: scoring_pb2_grpc.ScoringStub, settings: Settings, outbox_rows: Any
) -> None:
    await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(id="q", fields_json="{}"), timeout=5)
    await wait_for(lambda: not outbox_rows() and len(bus(settings)) == 1)
    reply = await stub.IngestEvents(scoring_pb2.IngestRequest(events=[event("q") for _ in range(5)]), timeout=5)
    ids = [r.event_id for r in reply.results]
    await wait_for(lambda: set(ids) <= {m.id for m in bus(settings)})
    await wait_for(lambda: not outbox_rows(), timeout=3)
    messages = bus(settings)
    assert_once_in_commit_order(messages)
    assert sorted(m.id for m in messages if m.type == "webinar_registered") == sorted(ids)


async def test_lead_writes_and_events_of_a_lead_reach_the_bus_in_commit_order(
    scoring: Running, stub: scoring_pb2_grpc.ScoringStub, settings: Settings, outbox_rows: Any
) -> None:
    """UpsertLead goes through the sweep, IngestEvents through memory: for each lead, the bus must
    still hold its messages in the order its writes committed (a lead_updated before the event that
    followed it), while other leads' writes keep both paths busy."""
    leads = [f"m{i}" for i in range(12)]
    rounds = 15

    async def chain(lead: str) -> list[tuple[str, str]]:
        """One lead's writes, one after the other: the order they commit in."""
        done: list[tuple[str, str]] = []
        reply = await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(id=lead, fields_json="{}"), timeout=5)
        done.append(("lead_created", f"lead_created:{lead}:{reply.lead.version}"))
        for n in range(rounds):
            reply = await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(
                id=lead, merge=True, fields_json=json.dumps({"attributes": {"n": n}})), timeout=5)
            done.append(("lead_updated", f"lead_updated:{lead}:{reply.lead.version}"))
            ingested = await stub.IngestEvents(scoring_pb2.IngestRequest(events=[event(lead, n=n)]), timeout=5)
            done.append(("webinar_registered", ingested.results[0].event_id))
        return done

    noise = [f"noise{i}" for i in range(4)]
    await stub.UpsertLeads(scoring_pb2.UpsertLeadsRequest(
        leads=[scoring_pb2.UpsertLeadRequest(id=lead, fields_json="{}") for lead in noise]), timeout=5)
    stop = asyncio.Event()

    async def load(lead: str) -> None:
        """Other leads' events, without a pause: the in-memory path always has something to send."""
        while not stop.is_set():
            await stub.IngestEvents(scoring_pb2.IngestRequest(events=[event(lead) for _ in range(20)]), timeout=5)

    loaders = [asyncio.create_task(load(lead)) for lead in noise]
    try:
        expected = dict(zip(leads, await asyncio.gather(*[chain(lead) for lead in leads]), strict=True))
    finally:
        stop.set()
        await asyncio.gather(*loaders)
    wanted = {mid for done in expected.values() for _, mid in done}
    await wait_for(lambda: wanted <= {m.id for m in bus(settings)})
    by_lead = assert_once_in_commit_order(bus(settings))
    for lead, done in expected.items():
        seen = [m.id for m in by_lead[lead] if m.type in ("lead_created", "lead_updated", "webinar_registered")
                and m.properties.get("source") != "behaviour"]
        assert seen == [mid for _, mid in done], lead
    await wait_for(lambda: not outbox_rows(), timeout=3)


# Keeps Redis busy (it runs one command at a time) for ARGV[1] microseconds: a slow moment of the bus.
STALL = """local t = redis.call('TIME') local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1])
return 1"""


async def test_a_lead_write_during_a_slow_publish_stays_before_the_event_that_followed_it(
    settings: Settings, outbox_rows: Any
) -> None:
    """While the outbox publishes ingest rows from memory and Redis is slow to answer, a lead is
    updated (sweep path) and then gets an event (memory path): on the bus the event must not
    overtake the update (journeys would act on the event before they saw the lead change)."""
    settings = settings.with_overrides(clock="real")  # the virtual clock reads Redis on every write
    running = await start_service("scoring", settings)
    stall = aioredis.from_url(settings.redis_url)
    try:
        async with mesh_channel(running.address) as ch:
            stub = scoring_pb2_grpc.ScoringStub(ch)
            await stub.UpsertLeads(scoring_pb2.UpsertLeadsRequest(
                leads=[scoring_pb2.UpsertLeadRequest(id=lead, fields_json="{}") for lead in ("a", "b")]), timeout=5)
            await wait_for(lambda: not outbox_rows())  # swept: the outbox loop is idle
            stalled = asyncio.ensure_future(stall.eval(STALL, 0, 2_000_000))
            await asyncio.sleep(0.05)  # Redis is now busy for a while
            # Lead b's event is published from memory: that publish now waits on Redis (and so does
            # the answer to its post, which comes once the event is on the bus).
            posted_b = asyncio.ensure_future(stub.IngestEvents(scoring_pb2.IngestRequest(events=[event("b")]),
                                                               timeout=5))
            await wait_for(lambda: bool(outbox_rows()))  # b's event committed, its publish stalled
            before = len(outbox_rows())
            upserted = asyncio.ensure_future(stub.UpsertLead(scoring_pb2.UpsertLeadRequest(
                id="a", merge=True, fields_json=json.dumps({"attributes": {"n": 1}})), timeout=5))
            await wait_for(lambda: len(outbox_rows()) > before)  # a's update committed, its sweep waits
            before = len(outbox_rows())
            posted_a = asyncio.ensure_future(stub.IngestEvents(scoring_pb2.IngestRequest(events=[event("a")]),
                                                               timeout=5))
            await wait_for(lambda: len(outbox_rows()) > before)  # a's event committed too
            assert not stalled.done(), "the writes took longer than the stall: the test proves nothing"
            await stalled
            await posted_b
            updated = f"lead_updated:a:{(await upserted).lead.version}"
            ingested = await posted_a
            expected = [updated, ingested.results[0].event_id]
            await wait_for(lambda: set(expected) <= {m.id for m in bus(settings)})
            by_lead = assert_once_in_commit_order(bus(settings))
            assert [m.id for m in by_lead["a"] if m.id in expected] == expected
            await wait_for(lambda: not outbox_rows(), timeout=3)
    finally:
        await stall.aclose()
        await running.stop(grace=0.5)


async def test_ingest_places_publish_in_reserved_order_as_commits_are_confirmed(settings: Settings) -> None:
    """Ingest transactions in flight together take places in one order while they hold their leads'
    locks; a committed place waits for every open place ahead of it, a failed one is dropped, and
    the rest go out in place order, not in the order their commits were confirmed."""
    from nurture.bus import Publisher
    from nurture.db import DriverWrites, open_database
    from services.scoring.app.outbox import OutboxRows
    from services.scoring.domain.records import OutboxRow
    from services.scoring.domain.rules import load_model
    from services.scoring.server import MIGRATIONS

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = open_database(settings, service="scoring", migrations_dir=MIGRATIONS)
    redis = redisconn.connect(settings)
    outbox = Outbox(db, OutboxRows(db.session, load_model(), DriverWrites(db.engine)),
                    Publisher(redis, settings.bus_shards))
    loop = asyncio.create_task(outbox.run())

    def row(seq: int, lead: str, version: int) -> OutboxRow:
        return OutboxRow(seq, lead, busmessage.encode(BusMessage(
            id=f"{lead}-v{version}", lead_id=lead, type="page_viewed", properties={},
            occurred_at="2026-01-01T00:00:00Z", lead=busmessage.LeadSnapshot(id=lead, version=version))), None)

    try:
        first, failing, third, fourth = (outbox.reserve() for _ in range(4))
        third.commit([row(3, "a", 3)])  # confirmed before the places ahead of it
        failing.fail()
        outbox.settle()
        await asyncio.sleep(0.2)
        assert bus(settings) == [], "a place went out while one ahead of it was still open"
        first.commit([row(1, "a", 1), row(2, "b", 1)])
        outbox.settle()
        await wait_for(lambda: len(bus(settings)) == 3)
        assert [m.id for m in bus(settings) if m.lead_id == "a"] == ["a-v1", "a-v3"]
        fourth.fail()  # a failure at the head: dropped, and what follows still goes out
        outbox.reserve().commit([row(5, "a", 5)])
        outbox.settle()
        await wait_for(lambda: len(bus(settings)) == 4)
        assert [m.id for m in bus(settings) if m.lead_id == "a"] == ["a-v1", "a-v3", "a-v5"]
        assert_once_in_commit_order(bus(settings))
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await redis.aclose()
        db.close()
