"""bench/sustained.py's view of a consumer's commit, on a real Redis with the real bus: an event counts
as committed by a group only once that group has acknowledged its entry (never while it is unread or
read and pending), and never before the handler finished."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from bench.sustained import CONSUMERS, AckPoller, commit_times, dead_letters, event_entries
from nurture.bus import Consumer, Publisher, stream_key
from nurture.busmessage import BusMessage

pytestmark = pytest.mark.anyio
SHARDS = 8


async def test_a_commit_is_seen_only_after_the_acknowledgement(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    ids = [f"ev-{i}" for i in range(12)]
    await Publisher(client, SHARDS).publish(
        [BusMessage(id=i, lead_id=f"lead-{n}", type="page_viewed") for n, i in enumerate(ids)]
        + [BusMessage(id="ev-0:score", lead_id="lead-0", type="score_changed")])  # not one of ours
    finished: list[float] = []

    async def journeys(messages: list[BusMessage]) -> None:
        finished.append(time.perf_counter())

    async def idle(messages: list[BusMessage]) -> None:
        raise AssertionError("not called")

    for group in CONSUMERS:
        await Consumer(client, group=group, shards=SHARDS, handler=idle).ensure_groups()

    entries = await event_entries(redis_url, SHARDS, set(ids))
    assert set(entries) == set(ids)  # each posted event found on the bus; the lead change left out
    for i in ids:
        shard, entry = entries[i]
        assert (await client.xrange(stream_key(shard), min=f"{entry[0]}-{entry[1]}", count=1))

    def seen(poller: AckPoller, group: str) -> dict[str, float]:
        out = {}
        for i in ids:
            shard, entry = entries[i]
            out[i] = commit_times(poller.snapshots.get((shard, group), []), [entry])[0]
        return out

    async with AckPoller(redis_url, SHARDS) as poller:
        await poller.poll()
        assert all(math.isinf(t) for g in CONSUMERS for t in seen(poller, g).values())  # nothing read yet

        assert await Consumer(client, group="journeys", shards=SHARDS, handler=journeys).drain() == 13
        await poller.poll()
        journeys_seen = seen(poller, "journeys")
        assert all(t >= finished[-1] for t in journeys_seen.values())  # never before the commit

        # messaging reads everything but has not acknowledged: delivered is not committed
        read: Any = await client.xreadgroup("messaging", "m-1", {stream_key(s): ">" for s in range(SHARDS)}, count=100)
        assert sum(len(items) for _, items in read) == 13
        await poller.poll()
        assert all(math.isinf(t) for t in seen(poller, "messaging").values())

        acked_at = time.perf_counter()
        for stream, items in read:
            await client.xack(stream, "messaging", *[entry_id for entry_id, _ in items])
        await poller.poll()
        assert all(acked_at <= t < math.inf for t in seen(poller, "messaging").values())
        # the others still never committed anything; journeys' times stay those of its first commit
        assert all(math.isinf(t) for g in ("crm_sync", "analytics") for t in seen(poller, g).values())
        assert seen(poller, "journeys") == journeys_seen
    assert await dead_letters(redis_url) == {group: 0 for group in CONSUMERS}
    await client.aclose()
