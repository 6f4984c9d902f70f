"""Kill -9 the scoring process again and again under load: every accepted event is scored once."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import grpc
import pytest
import redis
import sqlalchemy as sa

from nurture import busmessage
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.bus import stream_key
from nurture.rpc import sync_channel
from nurture.settings import Settings, to_environ
from tests.conftest import MESH_TOKEN, free_port

pytestmark = pytest.mark.slow
LEADS = 20
BATCHES = 60
PER_BATCH = 25


def start(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, **to_environ(settings), "NURTURE_GRPC_PORT": str(port)}
    return subprocess.Popen([sys.executable, "-m", "services.scoring"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_ready(stub: scoring_pb2_grpc.ScoringStub) -> None:
    for _ in range(300):
        try:
            stub.GetScoringModel(scoring_pb2.ScoringModelRequest(), timeout=1)
            return
        except grpc.RpcError:
            time.sleep(0.05)
    raise AssertionError("scoring did not come up")


def test_every_accepted_event_scored_exactly_once(settings: Settings) -> None:
    port = free_port()
    proc = start(settings, port)
    channel = sync_channel(f"127.0.0.1:{port}", MESH_TOKEN)
    stub = scoring_pb2_grpc.ScoringStub(channel)
    rng = random.Random(7)
    kills = 0
    try:
        wait_ready(stub)
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
                proc = start(settings, port)
                wait_ready(stub)
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
