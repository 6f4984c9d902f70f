"""The bus is trimmed only behind every consumer group (nurture.bus.trim_consumed): no entry a group has
not read, or has read and not acknowledged, ever leaves its stream, however long the stream grows (an
XADD MAXLEN would drop them); a stream no group reads yet is kept whole; a dead letter is retried from
the entry it carries once the stream has been trimmed past it; consumers trim as they go."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from nurture import bus
from nurture.bus import MAX_DELIVERIES, BusDeadLetters, Consumer, Publisher, stream_key, trim_consumed
from nurture.busmessage import BusMessage

pytestmark = pytest.mark.anyio


def _messages(n: int, start: int = 0) -> list[BusMessage]:
    return [BusMessage(id=f"m{i}", lead_id="lead-1", type="page_viewed", properties={"i": i})
            for i in range(start, start + n)]


async def _ids(client: aioredis.Redis, key: str) -> list[bytes]:
    entries: Any = await client.xrange(key)
    return [entry_id for entry_id, _ in entries]


async def test_trimming_keeps_every_entry_a_group_has_not_acknowledged(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    key = stream_key(0)
    await Publisher(client, 1).publish(_messages(1000))
    published = await _ids(client, key)
    assert len(published) == 1000
    await client.xgroup_create(key, "fast", id="0")
    await client.xgroup_create(key, "slow", id="0")
    await client.xreadgroup("fast", "c", {key: ">"}, count=1000)
    await client.xack(key, "fast", *published)
    # slow has read 600 and acknowledged 500: entries 500-599 are pending, 600-999 unread
    await client.xreadgroup("slow", "c", {key: ">"}, count=600)
    await client.xack(key, "slow", *published[:500])

    assert await trim_consumed(client, key, keep=1000) == 0  # not over `keep`: left alone
    removed = await trim_consumed(client, key, keep=0)
    left = await _ids(client, key)
    assert removed >= 300 and len(left) == 1000 - removed   # it trims (whole nodes below the bound) ...
    assert left == published[1000 - len(left):] and published[500] in left  # ... never past the pending
    pending: Any = await client.xreadgroup("slow", "c", {key: "0"}, count=1000)
    assert len(pending[0][1]) == 100 and all(fields for _, fields in pending[0][1])

    # a group that has read nothing holds the whole rest of the stream
    await client.xgroup_create(key, "new", id="0")
    assert await trim_consumed(client, key, keep=0) == 0 and await _ids(client, key) == left
    await client.aclose()


async def test_a_stream_no_group_reads_is_kept_whole(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    await Publisher(client, 1).publish(_messages(500))
    assert await trim_consumed(client, stream_key(0), keep=0) == 0
    assert await client.xlen(stream_key(0)) == 500
    await client.aclose()


async def test_a_dead_letter_is_retried_from_its_own_copy_after_the_stream_was_trimmed(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    key = stream_key(0)
    await Publisher(client, 1).publish([BusMessage(id="p1", lead_id="lead-7", type="poison", properties={"n": 1})])
    broken = True
    handled: list[BusMessage] = []

    async def handler(messages: list[BusMessage]) -> None:
        if broken and any(m.type == "poison" for m in messages):
            raise ValueError("cannot read this yet")
        handled.extend(messages)

    consumer = Consumer(client, group="g", shards=1, handler=handler)
    for _ in range(MAX_DELIVERIES):
        await consumer.drain()
    [poison_id] = await _ids(client, key)
    await Publisher(client, 1).publish(_messages(999))
    await consumer.drain()
    assert len(handled) == 999
    assert await trim_consumed(client, key, keep=0) > 0
    assert await client.xrange(key, min=poison_id, max=poison_id) == []  # trimmed past the dead letter

    letters = BusDeadLetters(consumer)
    [dead], _ = await letters.list(10)
    assert dead.lead_id == "lead-7" and dead.summary == "poison (p1)"
    broken = False
    done = await letters.retry(dead.id, "test")
    assert done is not None and done.delivered
    assert [(m.id, m.type, m.properties) for m in handled[999:]] == [("p1", "poison", {"n": 1})]
    await client.aclose()


async def test_consumers_trim_what_every_group_has_acknowledged(redis_url: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus, "STREAM_KEEP", 0)
    monkeypatch.setattr(bus, "TRIM_EVERY_S", 0.0)
    client = aioredis.from_url(redis_url)
    seen: dict[str, int] = {"a": 0, "b": 0}

    def counting(group: str):  # type: ignore[no-untyped-def]
        async def handler(messages: list[BusMessage]) -> None:
            seen[group] += len(messages)
        return handler

    a = Consumer(client, group="a", shards=2, handler=counting("a"))
    b = Consumer(client, group="b", shards=2, handler=counting("b"))
    await a.ensure_groups()
    await b.ensure_groups()
    await Publisher(client, 2).publish([BusMessage(id=f"m{i}", lead_id=f"lead-{i % 7}", type="page_viewed")
                                        for i in range(2000)])
    before = sum([await client.xlen(stream_key(s)) for s in range(2)])
    await a.drain()  # b has read nothing: a's trim leaves everything
    assert sum([await client.xlen(stream_key(s)) for s in range(2)]) == before == 2000
    await b.drain()
    after = sum([await client.xlen(stream_key(s)) for s in range(2)])
    assert seen == {"a": 2000, "b": 2000} and after < 2000 - 1000
    await client.aclose()
