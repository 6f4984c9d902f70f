"""The collect stream between the gateway and scoring (nurture.collectstream): answered events survive
scoring being killed -9 while it stores them (each stored once, none lost), and a malformed entry never
blocks the ones behind it."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from gateway.tracking.keys import SiteKey
from gateway.tracking.ratelimit import Append, Appended, RateLimits, Take
from nurture import collectstream, redisconn
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.redisconn import AsyncRedis
from nurture.settings import Settings
from tests.conftest import free_port, mesh_channel
from tests.helpers.processes import spawn_service, wait_serving
from tests.integration.tracking.mesh import SITE, SITE_KEY, tracking_mesh

pytestmark = pytest.mark.anyio
VISITORS = 150
PAGES = 12   # each visitor's page views per refill, one request each: 1,800 entries


async def left_in_stream(client: AsyncRedis, shards: int) -> int:
    return sum([await client.xlen(collectstream.stream_key(s)) for s in range(shards)])


async def pending(client: AsyncRedis, shards: int) -> int:
    total = 0
    for s in range(shards):
        for group in await client.xinfo_groups(collectstream.stream_key(s)):
            total += int(group["pending"])
    return total


@pytest.mark.slow
async def test_scoring_killed_while_storing_the_stream_stores_every_answered_event_once(settings: Settings,
                                                                                        tmp_path: Path) -> None:
    client = redisconn.connect(settings)
    limits = RateLimits(client, settings.bus_shards)
    key = SiteKey(key="pk_kill_test", origins=frozenset({SITE}), honor_dnt=True, honor_gpc=True,
                  rate_per_s=1_000_000, visitor_per_min=1_000_000)
    pages = 0

    async def answer(more: int) -> None:
        """`more` page views of every visitor, answered as the gateway answers them (its script): in order,
        a page per request, visitors interleaved."""
        nonlocal pages
        for page in range(pages, pages + more):
            appends = [Append(Take.now_for(key, f"kill-visitor-{v:04d}-abcdef", 1),
                              [(f"p{page}", collectstream.encode_event("page_viewed", {"page": f"/p/{page}",
                                                                                       "category": "pricing"},
                                                                       None, f"p{page}"))], "")
                       for v in range(VISITORS)]
            assert all(isinstance(r, Appended) and r.accepted == 1 for r in await limits.collect(appends))
        pages += more

    port = free_port()
    settings = settings.with_overrides(grpc_port=port)
    address = f"127.0.0.1:{port}"
    log = tmp_path / "scoring.log"
    rng = random.Random(5)
    cut_short = 0   # kills that left part of the stream stored and part not
    mid_batch = 0   # kills that left entries read and not acknowledged (redelivered to the next process)
    try:
        for _ in range(12):
            before = await left_in_stream(client, settings.bus_shards)
            if before < VISITORS * PAGES // 2:  # stored (nearly) all: more to be killed while storing
                await answer(PAGES)
                before = await left_in_stream(client, settings.bus_shards)
            proc = spawn_service("scoring", settings, log=log)
            try:
                await wait_serving(address)
                await asyncio.sleep(rng.uniform(0.0, 0.4))
            finally:
                proc.kill()
                proc.wait()
            left = await left_in_stream(client, settings.bus_shards)
            cut_short += 0 < left < before
            mid_batch += await pending(client, settings.bus_shards) > 0
            if cut_short and mid_batch:
                break
        assert cut_short and mid_batch, f"no kill landed while a batch was being stored (see {log})"
        proc = spawn_service("scoring", settings, log=log)
        try:
            await wait_serving(address)
            for _ in range(600):
                if await left_in_stream(client, settings.bus_shards) == 0:
                    break
                await asyncio.sleep(0.1)
            assert await left_in_stream(client, settings.bus_shards) == 0
            assert await pending(client, settings.bus_shards) == 0
            async with mesh_channel(address) as ch:
                stub = scoring_pb2_grpc.ScoringStub(ch)
                counts = [(await stub.GetVisitor(scoring_pb2.VisitorRequest(visitor_id=f"kill-visitor-{v:04d}-abcdef"),
                                                 timeout=30)).anonymous_events for v in range(VISITORS)]
            # Every visitor's every page view, once: a redelivered entry was dropped by the duplicate check.
            assert counts == [pages] * VISITORS
        finally:
            proc.kill()
            proc.wait()
    finally:
        await client.aclose()


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
