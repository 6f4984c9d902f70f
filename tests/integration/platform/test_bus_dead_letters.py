"""Bus dead letters as operators see them (nurture.bus.BusDeadLetters, served by Admin.DeadLetters and
Admin.RetryDeadLetter): a poison message is listed with its lead, type and the handler's error; retried
while the handler still fails it stays (with the new error); retried once the handler is fixed it is
handed to the handler exactly once, as first published, and leaves the dead letters. Unknown and
malformed ids are not found."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from nurture.bus import MAX_DELIVERIES, BusDeadLetters, Consumer, Publisher, dead_key
from nurture.busmessage import BusMessage

pytestmark = pytest.mark.anyio
SHARDS = 4


async def test_a_dead_letter_is_listed_then_retried_and_delivered(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    await Publisher(client, SHARDS).publish([BusMessage(id="p1", lead_id="lead-7", type="poison",
                                                        properties={"n": 1})])
    broken = True
    handled: list[BusMessage] = []

    async def handler(messages: list[BusMessage]) -> None:
        if broken:
            raise ValueError("the handler cannot read this yet")
        handled.extend(messages)

    consumer = Consumer(client, group="g", shards=SHARDS, handler=handler)
    for _ in range(MAX_DELIVERIES):
        await consumer.drain()
    letters = BusDeadLetters(consumer)
    items, total = await letters.list(10)
    assert total == 1 and len(items) == 1
    [dead] = items
    assert dead.kind == "bus" and dead.lead_id == "lead-7" and dead.summary == "poison (p1)"
    assert "ValueError: the handler cannot read this yet" in dead.error and dead.at is not None

    again = await letters.retry(dead.id, "test")
    assert again is not None and not again.delivered and "cannot read this yet" in again.error
    [still], _ = await letters.list(10)
    assert handled == [] and still.lead_id == "lead-7"

    broken = False
    done = await letters.retry(still.id, "test")
    assert done is not None and done.delivered and done.error == ""
    assert [(m.id, m.lead_id, m.type, m.properties) for m in handled] == [("p1", "lead-7", "poison", {"n": 1})]
    assert await client.xlen(dead_key("g")) == 0 and await letters.list(10) == ([], 0)
    assert await letters.retry(still.id, "test") is None  # gone: delivered once, not twice
    assert len(handled) == 1
    for bad in ("bus:nothing", "bus:1-1", "crm_push:4", "", "bus:1-1; DEL x"):
        assert await letters.retry(bad, "test") is None
    await client.aclose()
