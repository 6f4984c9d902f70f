"""Concurrent writers over the same leads: two scoring replicas on one database take shuffled batches
of events and lead upserts at once, many rounds, with retried idempotency keys racing each other.

On PostgreSQL (the production engine; `NURTURE_TEST_DATABASE_URL`) every replica runs eight
transactions at a time, so rows locked in different orders deadlock and two inserts of one new
idempotency key collide; the store must lock in key order and retry what can still lose a race, and
nothing of that may reach a caller. SQLite runs the same test (one writer per file, busy waits)."""

from __future__ import annotations

import asyncio
import json
import random

import grpc
import pytest
import sqlalchemy as sa

from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.settings import Settings
from tests.conftest import mesh_channel, start_service
from tests.integration.scoring.test_outbox import assert_once_in_commit_order, bus, wait_for

pytestmark = pytest.mark.anyio

LEADS = 40
ROUNDS = 6
BATCH = 120


async def test_concurrent_shuffled_batches_are_each_accepted_exactly_once(settings: Settings) -> None:
    replicas = [await start_service("scoring", settings), await start_service("scoring", settings)]
    channels = [mesh_channel(r.address) for r in replicas]
    stubs = [scoring_pb2_grpc.ScoringStub(c) for c in channels]
    rng = random.Random(7)
    lead_ids = [f"c-{i:03d}" for i in range(LEADS)]
    try:
        reply = await stubs[0].UpsertLeads(scoring_pb2.UpsertLeadsRequest(leads=[
            scoring_pb2.UpsertLeadRequest(id=lead, fields_json=json.dumps({"email": f"{lead}@example.com"}))
            for lead in lead_ids]), timeout=30)
        assert [r.error_code for r in reply.results] == [""] * LEADS

        keys: dict[str, set[str]] = {}  # idempotency key -> every event id answered for it
        errors: list[str] = []

        async def ingest(stub: scoring_pb2_grpc.ScoringStub, batch: list[tuple[str, str]]) -> None:
            reply = await stub.IngestEvents(scoring_pb2.IngestRequest(events=[
                scoring_pb2.Event(lead_id=lead, type="page_viewed", idempotency_key=key,
                                  properties_json=json.dumps({"category": "pricing"})) for lead, key in batch]),
                timeout=60)
            for (_, key), result in zip(batch, reply.results, strict=True):
                if result.error_code:
                    errors.append(f"{key}: {result.error_code} {result.error_message}")
                else:
                    keys.setdefault(key, set()).add(result.event_id)

        async def upsert(stub: scoring_pb2_grpc.ScoringStub, leads: list[str], n: int) -> None:
            reply = await stub.UpsertLeads(scoring_pb2.UpsertLeadsRequest(leads=[
                scoring_pb2.UpsertLeadRequest(id=lead, merge=True, fields_json=json.dumps({"attributes": {"n": n}}))
                for lead in leads]), timeout=60)
            errors.extend(f"upsert {r.lead.id}: {r.error_code} {r.error_message}" for r in reply.results
                          if r.error_code)

        for round_ in range(ROUNDS):
            calls = []
            for part in range(4):
                batch = [(lead, f"r{round_}-p{part}-{lead}-{k}") for lead in lead_ids for k in range(3)]
                rng.shuffle(batch)
                batch = batch[:BATCH]
                # The same batch to both replicas, each in its own order: a client retrying on another
                # replica while the first attempt is still running.
                retry = batch[:]
                rng.shuffle(retry)
                calls += [ingest(stubs[0], batch), ingest(stubs[1], retry)]
            for n in range(4):
                order = lead_ids[:]
                rng.shuffle(order)
                calls.append(upsert(stubs[n % 2], order, round_ * 10 + n))
            await asyncio.gather(*calls)

        assert errors == []
        # Exactly once: every key answered with one event id by both replicas, and stored once.
        assert all(len(ids) == 1 for ids in keys.values()), [k for k, ids in keys.items() if len(ids) > 1][:5]
        engine = sa.create_engine(settings.database_url_for("scoring"))
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT count(*), count(DISTINCT idempotency_key) FROM scoring_events"
                                          " WHERE idempotency_key IS NOT NULL")).one()
            scores = dict(conn.execute(sa.text("SELECT id, score FROM scoring_leads")).all())
        engine.dispose()
        assert tuple(stored) == (len(keys), len(keys))
        per_lead = {lead: sum(1 for key in keys if f"-{lead}-" in key) for lead in lead_ids}
        lead_replies = await stubs[1].GetLeads(scoring_pb2.GetLeadsRequest(ids=lead_ids), timeout=10)
        assert {lead.id: lead.score for lead in lead_replies.leads} == scores
        assert all(per_lead[lead] > 0 and scores[lead] > 0 for lead in lead_ids)
        stats = [await common_pb2_grpc.AdminStub(c).Stats(common_pb2.StatsRequest(), timeout=5) for c in channels]
        exhausted = {k: v for s in stats for k, v in s.counters.items() if k.startswith("db.retries_exhausted")}
        assert exhausted == {}
    finally:
        for c in channels:
            await c.close()
        for r in replicas:
            await r.stop(grace=0.5)


# An event of this type fails its transaction: on PostgreSQL at COMMIT (a deferred constraint trigger,
# which first waits for an advisory lock the test holds, so the transaction sits in its commit with
# its leads locked and its place in the publishing order taken), on SQLite at its INSERT.
POISON_PG = """
CREATE FUNCTION poison_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.type = 'poisoned' THEN
    PERFORM pg_advisory_xact_lock({key});
    RAISE EXCEPTION 'poisoned event';
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER poison AFTER INSERT ON scoring_events DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION poison_check();
"""
POISON_SQLITE = """CREATE TRIGGER poison BEFORE INSERT ON scoring_events WHEN NEW.type = 'poisoned'
BEGIN SELECT RAISE(ABORT, 'poisoned event'); END"""


def tagged(lead: str, tag: str, type_: str = "webinar_registered") -> scoring_pb2.Event:
    return scoring_pb2.Event(lead_id=lead, type=type_, properties_json=json.dumps({"tag": tag}))


async def test_a_failed_commit_between_concurrent_ingests_publishes_none_of_its_messages_and_the_rest_in_order(
    settings: Settings,
) -> None:
    """On PostgreSQL two ingest transactions run at once: while one sits in a commit that will fail,
    holding lead a, another call (lead b) commits. Its messages wait behind the failing one's place,
    then go out once that place is dropped; a call for lead a waits for the lock and goes out after.
    Nothing of the failed call reaches the bus, and the writes after it are published in order.
    On SQLite (one writer) the same failure, in sequence."""
    settings = settings.with_overrides(clock="real")  # the virtual clock reads Redis on every write
    running = await start_service("scoring", settings)
    engine = sa.create_engine(settings.database_url_for("scoring"), isolation_level="AUTOCOMMIT")
    postgres = engine.dialect.name == "postgresql"
    key = random.randrange(1, 2**31)
    holder = engine.connect()
    try:
        async with mesh_channel(running.address) as ch:
            stub = scoring_pb2_grpc.ScoringStub(ch)
            await stub.UpsertLeads(scoring_pb2.UpsertLeadsRequest(
                leads=[scoring_pb2.UpsertLeadRequest(id=lead, fields_json="{}") for lead in ("a", "b")]), timeout=10)
            await wait_for(lambda: len(bus(settings)) == 2, timeout=10)
            holder.exec_driver_sql(POISON_PG.format(key=key) if postgres else POISON_SQLITE)

            doomed = scoring_pb2.IngestRequest(events=[tagged("a", "doomed"), tagged("a", "doomed", "poisoned")])
            if postgres:
                holder.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
                failing = asyncio.ensure_future(stub.IngestEvents(doomed, timeout=30))
                await wait_for(lambda: holder.exec_driver_sql(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").scalar() == 1,
                    timeout=10)  # its transaction is in its commit, its place taken
                # A second writer takes lead b's call meanwhile (one writer would wait for the first)
                # and commits; its answer waits for its messages, which wait behind the open place.
                other = asyncio.ensure_future(stub.IngestEvents(scoring_pb2.IngestRequest(
                    events=[tagged("b", "during")]), timeout=30))
                await wait_for(lambda: holder.exec_driver_sql(
                    "SELECT count(*) FROM scoring_events WHERE lead_id = 'b'").scalar() == 1, timeout=10)
                same_lead = asyncio.ensure_future(stub.IngestEvents(scoring_pb2.IngestRequest(
                    events=[tagged("a", "behind")]), timeout=30))  # waits for lead a's lock
                await asyncio.sleep(0.3)
                assert not failing.done()
                assert not other.done(), "answered before its messages were on the bus"
                assert not [m for m in bus(settings) if m.lead_id == "b" and m.type == "webinar_registered"], \
                    "published ahead of an open place"
                holder.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
                with pytest.raises(grpc.aio.AioRpcError):
                    await failing
                during = (await other).results[0].event_id
                assert during
                behind = (await same_lead).results[0].event_id
                expected = {"a": [behind], "b": [during]}
            else:
                during = (await stub.IngestEvents(scoring_pb2.IngestRequest(
                    events=[tagged("b", "during")]), timeout=10)).results[0].event_id
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.IngestEvents(doomed, timeout=10)
                behind = (await stub.IngestEvents(scoring_pb2.IngestRequest(
                    events=[tagged("a", "behind")]), timeout=10)).results[0].event_id
                expected = {"a": [behind], "b": [during]}
            # Later events, one call after the other, each lead's in its call order.
            for n in range(3):
                reply = await stub.IngestEvents(scoring_pb2.IngestRequest(
                    events=[tagged("a", f"later{n}"), tagged("b", f"later{n}")]), timeout=10)
                expected["a"].append(reply.results[0].event_id)
                expected["b"].append(reply.results[1].event_id)
            wanted = {mid for ids in expected.values() for mid in ids}
            await wait_for(lambda: wanted <= {m.id for m in bus(settings)}, timeout=10)
            messages = bus(settings)
            by_lead = assert_once_in_commit_order(messages)
            assert not [m for m in messages if m.properties.get("tag") == "doomed" or m.type == "poisoned"]
            for lead, ids in expected.items():
                assert [m.id for m in by_lead[lead] if m.type == "webinar_registered"] == ids, lead
    finally:
        holder.close()
        engine.dispose()
        await running.stop(grace=0.5)
