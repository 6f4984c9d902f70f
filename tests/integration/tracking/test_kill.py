"""Kill -9 scoring at random moments while it stores a backlog of the website collect stream (events the
gateway has answered), restart it, and finish: every answered event stored exactly once, nothing left
pending (nurture.collectstream, services/scoring/app/collect_stream.py)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from gateway.tracking.keys import SiteKey
from gateway.tracking.ratelimit import Append, Appended, RateLimits, Take
from nurture import collectstream, redisconn
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.settings import Settings
from tests.conftest import free_port, mesh_channel
from tests.helpers.processes import spawn_service, wait_serving
from tests.integration.tracking.mesh import SITE
from tests.integration.tracking.test_collect_stream import left_in_stream, pending

pytestmark = [pytest.mark.slow, pytest.mark.anyio]
VISITORS = 150
PAGES = 12   # each visitor's page views per refill, one request each: 1,800 entries


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
        # Until one kill has cut a backlog short and one has caught a batch read and not yet acknowledged
        # (a window of a transaction's length, which a random kill can miss several times in a row on a
        # fast or a busy machine); the loop ends as soon as both have happened.
        for _ in range(40):
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


