"""SharedKeyLocks: one key's work at one holder at a time across processes (two lock objects on one Redis
stand for two replicas), a crashed holder's lease running out, a busy key answered as such, and a late
holder never releasing the next one's lease; on a plain Redis and on a Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from nurture import redisconn
from nurture.locks import LockBusy, SharedKeyLocks
from nurture.ports import free_port
from nurture.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["redis", "cluster"])
async def client(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[redisconn.AsyncRedis]:
    chosen: Settings = settings if request.param == "redis" else request.getfixturevalue("cluster_settings")
    c = redisconn.connect(chosen)
    yield c
    await c.aclose()


async def test_two_replicas_take_one_key_in_turn(client: redisconn.AsyncRedis) -> None:
    a, b = SharedKeyLocks(client, "t:lock"), SharedKeyLocks(client, "t:lock")
    inside: list[str] = []
    overlaps = 0

    async def work(locks: SharedKeyLocks, who: str, key: str) -> None:
        nonlocal overlaps
        async with locks.hold(key):
            overlaps += bool(inside)
            inside.append(who)
            await asyncio.sleep(0.01)
            inside.remove(who)

    await asyncio.gather(*(work(a if i % 2 else b, str(i), "crm:deal:d-1") for i in range(12)))
    assert overlaps == 0
    # Two keys do not wait for each other: both are held at once.
    async with a.hold("crm:deal:d-1"), b.hold("crm:deal:d-2"):
        assert await client.exists("t:lock:{crm:deal:d-1}", "t:lock:{crm:deal:d-2}") == 2
    assert await client.exists("t:lock:{crm:deal:d-1}", "t:lock:{crm:deal:d-2}") == 0


async def test_a_crashed_holders_lease_runs_out(client: redisconn.AsyncRedis) -> None:
    # A holder that died holding the key: its lease is in Redis and nobody will release it.
    await client.set("t:lock:{k}", "dead-holder", px=300)
    locks = SharedKeyLocks(client, "t:lock", wait_s=5)
    async with locks.hold("k"):
        assert await client.get("t:lock:{k}") != b"dead-holder"


async def test_a_key_held_past_the_wait_is_busy(client: redisconn.AsyncRedis) -> None:
    await client.set("t:lock:{k}", "other-replica", px=10_000)
    with pytest.raises(LockBusy, match="another replica"):
        async with SharedKeyLocks(client, "t:lock", wait_s=0.1).hold("k"):
            pass
    assert await client.get("t:lock:{k}") == b"other-replica"  # not taken, not released


async def test_a_late_holder_does_not_release_the_next_ones_lease(client: redisconn.AsyncRedis) -> None:
    late = SharedKeyLocks(client, "t:lock", lease_ms=200)
    async with late.hold("k"):
        await asyncio.sleep(0.4)   # paused past its lease...
        await client.set("t:lock:{k}", "next-holder", px=10_000)  # ...which the next holder took
    assert await client.get("t:lock:{k}") == b"next-holder"


async def test_without_redis_it_is_the_process_lock() -> None:
    locks = SharedKeyLocks(None, "t:lock")
    order: list[int] = []

    async def work(i: int) -> None:
        async with locks.hold("k"):
            order.append(i)
            await asyncio.sleep(0.005)
            order.append(i)

    await asyncio.gather(*(work(i) for i in range(4)))
    assert all(order[i] == order[i + 1] for i in range(0, len(order), 2))




async def test_a_batch_takes_its_leases_together_and_gives_back_a_busy_items_at_once(
        client: redisconn.AsyncRedis) -> None:
    await client.set("t:lock:{b1}", "other-replica", px=10_000)
    locks = SharedKeyLocks(client, "t:lock")
    async with locks.hold_each([["a2", "a1"], ["b2", "b1"], ["c"]]) as held:
        assert held == [True, False, True]
        assert await client.exists("t:lock:{a1}", "t:lock:{a2}", "t:lock:{c}") == 3
        # The busy item holds nothing while it waits (no hold-and-wait): its other key is free again.
        assert await client.exists("t:lock:{b2}") == 0
        # Another replica's item meeting this batch's keys waits for them.
        async with SharedKeyLocks(client, "t:lock").hold_each([["c"], ["d"]]) as theirs:
            assert theirs == [False, True]
    assert await client.exists("t:lock:{a1}", "t:lock:{a2}", "t:lock:{c}", "t:lock:{d}") == 0
    assert await client.get("t:lock:{b1}") == b"other-replica"  # not taken, not released


async def test_a_redis_that_cannot_answer_is_busy_not_a_failure() -> None:
    """Contacts took no lease before: a Redis down now answers "try again" (UNAVAILABLE at crm_sync),
    not an unknown error."""
    down = aioredis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    locks = SharedKeyLocks(down, "t:lock")
    try:
        with pytest.raises(LockBusy, match="cannot be taken now"):
            async with locks.hold_each([["a"], ["b"]]):
                pass
        with pytest.raises(LockBusy, match="cannot be taken now"):
            async with locks.hold("k"):
                pass
    finally:
        await down.aclose()
