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

import pytest
import sqlalchemy as sa

from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.settings import Settings
from tests.conftest import mesh_channel, start_service

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
