"""The event bus on a Redis Cluster of 3 masters (every shard's stream has a slot of its own, spread over
the nodes): published, read per stream, handled in one call in per-lead order and acknowledged; what a
crashed consumer had read is read again by its restart; a poison message is dead-lettered and retried;
the running consumer's blocking reads answer as soon as any stream has entries; the lag is counted over
every node."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis.asyncio.cluster as aiocluster

from nurture import redisconn
from nurture.bus import MAX_DELIVERIES, BusDeadLetters, Consumer, Publisher, dead_key, lag, stream_key
from nurture.busmessage import BusMessage
from nurture.redisconn import shard_of
from nurture.settings import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]
SHARDS = 8


def leads_on_every_shard() -> list[str]:
    found: dict[int, str] = {}
    i = 0
    while len(found) < SHARDS:
        found.setdefault(shard_of(f"lead-{i}", SHARDS), f"lead-{i}")
        i += 1
    return [found[s] for s in range(SHARDS)]


async def test_the_shards_live_on_every_master(cluster_settings: Settings) -> None:
    """What the other tests rely on: the bus's streams are not all on one node (else no command would
    ever cross nodes here)."""
    client = redisconn.connect(cluster_settings)
    assert isinstance(client, aiocluster.RedisCluster)
    await client.initialize()
    nodes = {client.get_node_from_key(stream_key(s)).port for s in range(SHARDS)}
    assert len(nodes) == 3
    await client.aclose()


async def test_published_messages_are_read_from_every_node_in_one_call_in_per_lead_order(
        cluster_settings: Settings) -> None:
    client = redisconn.connect(cluster_settings)
    leads = leads_on_every_shard()
    await Publisher(client, SHARDS).publish(
        [BusMessage(id=f"{lead}:{n}", lead_id=lead, type="page_viewed", properties={"n": n})
         for n in range(5) for lead in leads])
    calls: list[list[BusMessage]] = []

    async def handler(messages: list[BusMessage]) -> None:
        calls.append(messages)

    assert await Consumer(client, group="g", shards=SHARDS, handler=handler).drain() == 5 * SHARDS
    assert len(calls) == 1
    for lead in leads:
        assert [m.properties["n"] for m in calls[0] if m.lead_id == lead] == [0, 1, 2, 3, 4]
    for shard in range(SHARDS):
        assert (await client.xpending(stream_key(shard), "g"))["pending"] == 0
    # Acknowledged: a second drain finds nothing.
    assert await Consumer(client, group="g", shards=SHARDS, handler=handler).drain() == 0
    await client.aclose()


async def test_what_a_crashed_consumer_had_read_is_read_again_by_its_restart(cluster_settings: Settings) -> None:
    client = redisconn.connect(cluster_settings)
    leads = leads_on_every_shard()
    await Publisher(client, SHARDS).publish([BusMessage(id=f"m-{lead}", lead_id=lead, type="x") for lead in leads])
    reading = asyncio.Event()

    async def hangs(messages: list[BusMessage]) -> None:
        reading.set()
        await asyncio.Event().wait()  # the process dies here, before its commit and ack

    crashed = asyncio.create_task(Consumer(client, group="g", shards=SHARDS, handler=hangs, consumer="c1").drain())
    await asyncio.wait_for(reading.wait(), 10)
    crashed.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await crashed
    pending = [(await client.xpending(stream_key(s), "g"))["pending"] for s in range(SHARDS)]
    assert pending == [1] * SHARDS  # read, not acknowledged
    handled: list[str] = []

    async def handler(messages: list[BusMessage]) -> None:
        handled.extend(m.id for m in messages)

    restarted = redisconn.connect(cluster_settings)
    assert await Consumer(restarted, group="g", shards=SHARDS, handler=handler, consumer="c1").drain() == SHARDS
    assert sorted(handled) == sorted(f"m-{lead}" for lead in leads)
    assert [(await client.xpending(stream_key(s), "g"))["pending"] for s in range(SHARDS)] == [0] * SHARDS
    await client.aclose()
    await restarted.aclose()


async def test_a_poison_message_is_dead_lettered_then_retried_and_delivered(cluster_settings: Settings) -> None:
    client = redisconn.connect(cluster_settings)
    leads = leads_on_every_shard()
    await Publisher(client, SHARDS).publish(
        [BusMessage(id="p1", lead_id=leads[5], type="poison")]
        + [BusMessage(id=f"g-{lead}", lead_id=lead, type="x") for lead in leads if lead != leads[5]])
    broken = True
    handled: list[str] = []

    async def handler(messages: list[BusMessage]) -> None:
        if broken and any(m.type == "poison" for m in messages):
            raise ValueError("cannot handle this")
        handled.extend(m.id for m in messages)

    consumer = Consumer(client, group="g", shards=SHARDS, handler=handler)
    for _ in range(MAX_DELIVERIES):
        await consumer.drain()
    assert sorted(handled) == sorted(f"g-{lead}" for lead in leads if lead != leads[5])  # each once
    assert await client.xlen(dead_key("g")) == 1
    letters = BusDeadLetters(consumer)
    [letter], total = await letters.list(10)
    assert total == 1 and letter.lead_id == leads[5] and letter.summary == "poison (p1)"
    broken = False
    done = await letters.retry(letter.id, "test")
    assert done is not None and done.delivered
    assert handled.count("p1") == 1 and await client.xlen(dead_key("g")) == 0
    await client.aclose()


async def test_the_running_consumer_answers_the_first_stream_with_entries_without_waiting_for_the_others(
        cluster_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Blocking reads on a cluster are one per stream; a message on any node is handled while the reads
    on the idle streams still wait (a block of 30 s: waiting for all of them would time the test out)."""
    client = redisconn.connect(cluster_settings)
    publisher = Publisher(client, SHARDS)
    leads = leads_on_every_shard()
    handled: list[str] = []
    seen = asyncio.Event()

    async def handler(messages: list[BusMessage]) -> None:
        handled.extend(m.id for m in messages)
        seen.set()

    consumer = Consumer(client, group="g", shards=SHARDS, handler=handler, linger=0.0)
    task = asyncio.create_task(consumer.run(idle_block_ms=30_000))
    try:
        await asyncio.sleep(0.3)  # groups made, a read blocked on every stream
        for n, lead in enumerate((leads[0], leads[3], leads[6])):
            seen.clear()
            await publisher.publish([BusMessage(id=f"t{n}", lead_id=lead, type="x")])
            await asyncio.wait_for(seen.wait(), 10)
        assert handled == ["t0", "t1", "t2"]
    finally:
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
    assert done == {task}  # stopped: the cancel reached it, though it landed in the middle of a command
    assert not [r for r in caplog.records if "consumer loop error" in r.getMessage()]
    await client.aclose()


async def test_the_lag_of_every_group_is_counted_over_every_node(cluster_settings: Settings) -> None:
    client = redisconn.connect(cluster_settings)
    leads = leads_on_every_shard()
    await Publisher(client, SHARDS).publish([BusMessage(id=f"m-{lead}", lead_id=lead, type="x") for lead in leads])

    async def handler(messages: list[BusMessage]) -> None:
        return None

    ahead = Consumer(client, group="ahead", shards=SHARDS, handler=handler)
    behind = Consumer(client, group="behind", shards=SHARDS, handler=handler)
    await ahead.drain()
    await behind.ensure_groups()
    by_group = {g.group: g for g in await lag(client, SHARDS)}
    assert (by_group["ahead"].waiting, by_group["ahead"].pending, by_group["ahead"].dead) == (0, 0, 0)
    assert (by_group["behind"].waiting, by_group["behind"].pending) == (SHARDS, 0)
    await client.aclose()
