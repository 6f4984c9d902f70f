"""Kill -9 the scoring process again and again under load: every accepted event is scored once."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import time

import grpc
import pytest
import redis
import sqlalchemy as sa

from nurture import busmessage
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.bus import stream_key
from nurture.rpc import sync_channel
from nurture.settings import Settings
from tests.conftest import MESH_TOKEN, free_port
from tests.helpers.processes import spawn_service, wait_answering

pytestmark = pytest.mark.slow
LEADS = 20
BATCHES = 60
PER_BATCH = 25


def test_every_accepted_event_scored_exactly_once(settings: Settings) -> None:
    port = free_port()
    proc = spawn_service("scoring", settings.with_overrides(grpc_port=port))
    channel = sync_channel(f"127.0.0.1:{port}", MESH_TOKEN)
    stub = scoring_pb2_grpc.ScoringStub(channel)
    rng = random.Random(7)
    kills = 0
    try:
        wait_answering(lambda: stub.GetScoringModel(scoring_pb2.ScoringModelRequest(), timeout=1))
        for i in range(LEADS):
            stub.UpsertLead(scoring_pb2.UpsertLeadRequest(id=f"k{i}", fields_json="{}"), timeout=5)
        for b in range(BATCHES):
            batch = [scoring_pb2.Event(lead_id=f"k{rng.randrange(LEADS)}", type="webinar_registered",
                                       properties_json=json.dumps({"n": b * PER_BATCH + j}),
                                       idempotency_key=f"e{b}-{j}") for j in range(PER_BATCH)]
            if rng.random() < 0.15:
                # Kill while this batch may be in flight: the client cannot know whether it landed.
                future = stub.IngestEvents.future(scoring_pb2.IngestRequest(events=batch), timeout=5)
                time.sleep(rng.random() * 0.02)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                with contextlib.suppress(grpc.RpcError):
                    future.result()
                proc = spawn_service("scoring", settings.with_overrides(grpc_port=port))
                wait_answering(lambda: stub.GetScoringModel(scoring_pb2.ScoringModelRequest(), timeout=1))
            # At-least-once delivery from the client; the idempotency keys make it exactly once.
            reply = stub.IngestEvents(scoring_pb2.IngestRequest(events=batch), timeout=10)
            assert all(not r.error_code for r in reply.results)
        time.sleep(1.5)  # the outbox publisher runs at least once a second
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        channel.close()
    assert kills >= 3
    engine = sa.create_engine(settings.database_url_for("scoring"))
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM scoring_events")).scalar()
        keys = conn.execute(sa.text("SELECT count(DISTINCT idempotency_key) FROM scoring_events")).scalar()
        total = conn.execute(sa.text("SELECT sum(score) FROM scoring_leads")).scalar()
        changes = conn.execute(sa.text("SELECT count(*) FROM scoring_score_changes")).scalar()
        event_ids = {r[0] for r in conn.execute(sa.text("SELECT id FROM scoring_events"))}
        pending = conn.execute(sa.text("SELECT count(*) FROM scoring_outbox")).scalar()
    engine.dispose()
    assert count == keys == BATCHES * PER_BATCH
    assert changes == count and total == 5 * count
    client = redis.Redis.from_url(settings.redis_url)
    published = set()
    for shard in range(settings.bus_shards):
        for _id, fields in client.xrange(stream_key(shard)):
            message = busmessage.decode(fields[b"m"])
            if message.type == "webinar_registered":
                published.add(message.id)
    assert pending == 0
    assert published == event_ids
