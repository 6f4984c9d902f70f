"""The collect stream between the gateway and scoring (nurture.collectstream): a malformed entry never
blocks the ones behind it (scoring killed while storing it: test_kill.py)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from nurture import collectstream, redisconn
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.redisconn import AsyncRedis
from nurture.settings import Settings
from tests.conftest import mesh_channel
from tests.integration.tracking.mesh import SITE, SITE_KEY, tracking_mesh

pytestmark = pytest.mark.anyio


async def left_in_stream(client: AsyncRedis, shards: int) -> int:
    return sum([await client.xlen(collectstream.stream_key(s)) for s in range(shards)])


async def pending(client: AsyncRedis, shards: int) -> int:
    total = 0
    for s in range(shards):
        for group in await client.xinfo_groups(collectstream.stream_key(s)):
            total += int(group["pending"])
    return total


async def test_a_malformed_entry_never_blocks_the_stream(settings: Settings, tmp_path: Path) -> None:
    async with tracking_mesh(settings, tmp_path, services=("scoring",)) as mesh:
        client = redisconn.connect(mesh.settings)
        try:
            shard = collectstream.shard_for(SITE_KEY, mesh.settings.bus_shards)
            stream = collectstream.stream_key(shard)
            await client.xadd(stream, {"v": "broken-0123456789abcdef", "e": "not json"})
            await client.xadd(stream, {"e": "[]"})  # no visitor
            r = await mesh.client.post(f"/t/v1/collect?k={SITE_KEY}", headers={
                "Origin": SITE, "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0 Safari/537.36"},
                content=json.dumps({"visitor_id": "after-0123456789abcdef",
                                    "events": [{"id": "a", "type": "page_viewed", "properties": {"page": "/"}}]}))
            assert r.json()["accepted"] == 1, r.text
            await mesh.settle()
            assert await left_in_stream(client, mesh.settings.bus_shards) == 0
            async with mesh_channel(mesh.services["scoring"].address) as ch:
                found = await scoring_pb2_grpc.ScoringStub(ch).GetVisitor(
                    scoring_pb2.VisitorRequest(visitor_id="after-0123456789abcdef"), timeout=10)
            assert found.anonymous_events == 1
        finally:
            await client.aclose()


async def test_an_entry_scoring_cannot_store_is_set_aside_and_the_others_are_stored(settings: Settings,
                                                                                     tmp_path: Path) -> None:
    """An entry whose batch fails is tried alone: it fails while the others store, so it is the entry,
    not the database: it goes to the shard's dead letters (kept whole, with the error) and leaves the
    stream; the entries read with it are stored once."""
    async with tracking_mesh(settings, tmp_path, services=("scoring",)) as mesh:
        client = redisconn.connect(mesh.settings)
        try:
            shard = collectstream.shard_for(SITE_KEY, mesh.settings.bus_shards)
            stream = collectstream.stream_key(shard)
            # Not what the gateway writes: a time without a zone, which scoring cannot order against its own.
            bad = json.dumps([["page_viewed", {"page": "/"}, "2026-01-01T00:00:00", "x1"]])
            good = [json.dumps([["page_viewed", {"page": f"/{n}"}, None, f"g{n}"]]) for n in range(3)]
            await client.xadd(stream, {"v": "good-0123456789abcdef", "e": good[0], "t": ""})
            await client.xadd(stream, {"v": "poison-0123456789abcdef", "e": bad, "t": ""})
            for g in good[1:]:
                await client.xadd(stream, {"v": "good-0123456789abcdef", "e": g, "t": ""})
            await mesh.settle()
            assert await left_in_stream(client, mesh.settings.bus_shards) == 0
            assert await pending(client, mesh.settings.bus_shards) == 0
            dead = await client.xrange(collectstream.dead_key(shard))
            assert len(dead) == 1
            fields = dead[0][1]
            assert fields[b"v"] == b"poison-0123456789abcdef" and fields[b"e"] == bad.encode() and fields[b"error"]
            async with mesh_channel(mesh.services["scoring"].address) as ch:
                found = await scoring_pb2_grpc.ScoringStub(ch).GetVisitor(
                    scoring_pb2.VisitorRequest(visitor_id="good-0123456789abcdef"), timeout=10)
                assert found.anonymous_events == 3

                # Operators see it through scoring's Admin service (the console's operations page) and
                # retry it: still unstorable, it stays, with the new error.
                admin = common_pb2_grpc.AdminStub(ch)
                listed = await admin.DeadLetters(common_pb2.DeadLettersRequest(limit=10), timeout=10)
                assert listed.total == 1
                [letter] = listed.items
                assert letter.id == f"collect:{shard}:{dead[0][0].decode()}" and letter.kind == "collect"
                assert letter.summary == "1 website event (page_viewed) of a visitor" and letter.error
                again = await admin.RetryDeadLetter(common_pb2.RetryDeadLetterRequest(id=letter.id, actor="t"),
                                                    timeout=10)
                assert not again.delivered and again.error
                [still] = (await admin.DeadLetters(common_pb2.DeadLettersRequest(limit=10), timeout=10)).items
                assert still.id != letter.id and still.summary == letter.summary

                # One set aside for a passing reason (its events are fine): retried, it is stored once and
                # leaves the dead letters; an unknown or malformed id is not found.
                fine = json.dumps([["page_viewed", {"page": "/later"}, None, "f1"]])
                await client.xadd(collectstream.dead_key(shard), {"entry": "1-1", "v": "later-0123456789abcdef",
                                                                  "e": fine, "t": "", "error": "database away"})
                listed = await admin.DeadLetters(common_pb2.DeadLettersRequest(limit=10), timeout=10)
                [later] = [x for x in listed.items if x.error == "database away"]
                done = await admin.RetryDeadLetter(common_pb2.RetryDeadLetterRequest(id=later.id, actor="t"),
                                                   timeout=10)
                assert done.delivered
                visitor = await scoring_pb2_grpc.ScoringStub(ch).GetVisitor(
                    scoring_pb2.VisitorRequest(visitor_id="later-0123456789abcdef"), timeout=10)
                assert visitor.anonymous_events == 1
                assert (await admin.DeadLetters(common_pb2.DeadLettersRequest(limit=10), timeout=10)).total == 1
                for bad_id in (later.id, f"collect:{shard}:1-1", "collect:99:1-1", "collect:x", "bus:1-1"):
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await admin.RetryDeadLetter(common_pb2.RetryDeadLetterRequest(id=bad_id, actor="t"), timeout=10)
                    assert err.value.code() == grpc.StatusCode.NOT_FOUND, bad_id
        finally:
            await client.aclose()
