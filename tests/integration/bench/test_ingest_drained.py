"""bench/ingest.py's drain, per consumer group, on a real Redis with the real bus: a group counts as
finished only once it has read and acknowledged every entry of every shard, and the drain ends with the
last group, whose finish it is."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from bench.ingest import drained
from nurture.bus import Consumer, Publisher
from nurture.busmessage import BusMessage

pytestmark = pytest.mark.anyio
SHARDS = 4


async def test_each_group_finishes_when_it_has_acknowledged_everything(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    await Publisher(client, SHARDS).publish([BusMessage(id=f"e{n}", lead_id=f"lead-{n}", type="page_viewed")
                                             for n in range(12)])

    async def done(messages: list[BusMessage]) -> None:
        return None

    quick = Consumer(client, group="quick", shards=SHARDS, handler=done)
    slow = Consumer(client, group="slow", shards=SHARDS, handler=done)
    await slow.ensure_groups()
    assert await quick.drain() == 12
    finished: dict[str, float] = {}
    # "slow" has read nothing: the drain waits for it until the timeout, "quick" finished at once.
    assert await drained(redis_url, timeout=0.5, finished=finished) >= 0.5
    assert set(finished) == {"quick"} and finished["quick"] < 0.3

    assert await slow.drain() == 12
    finished.clear()
    assert await drained(redis_url, timeout=5, finished=finished) < 1
    assert set(finished) == {"quick", "slow"}
    await client.aclose()
