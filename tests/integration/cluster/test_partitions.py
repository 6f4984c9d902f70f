"""Partition ownership (nurture.partitions) on a Redis Cluster of 3 masters: a group's leases and members
share one slot (its scripts run there), and a bus shard a replica gains is taken over on the node that
holds it: the entries its last owner read and never acknowledged are claimed and handled first, once,
in each lead's order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.cluster import key_slot

from nurture import redisconn
from nurture.bus import Consumer, Publisher, stream_key
from nurture.busmessage import BusMessage
from nurture.db import Database, open_database
from nurture.partitions import Ownership, lease_key, members_key
from nurture.settings import Settings
from services.journeys import storage

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]
SHARDS = 8
MIGRATIONS = Path(storage.__file__).with_name("migrations")


@pytest.fixture
async def db(cluster_settings: Settings) -> AsyncIterator[Database]:
    database = open_database(cluster_settings, service="journeys", migrations_dir=MIGRATIONS)
    yield database
    database.close()


async def test_a_gained_shards_pending_entries_are_handled_first_and_once(cluster_settings: Settings,
                                                                          db: Database) -> None:
    assert len({key_slot(lease_key("g", p).encode()) for p in range(SHARDS)}
               | {key_slot(members_key("g").encode())}) == 1
    client = redisconn.connect(cluster_settings)
    a = Ownership(client, db, storage.PARTITIONS, group="g", partitions=SHARDS, owner="a", lease_ms=10_000)
    b = Ownership(client, db, storage.PARTITIONS, group="g", partitions=SHARDS, owner="b", lease_ms=10_000)
    await a.tick()
    handled: list[BusMessage] = []

    async def handle(messages: list[BusMessage]) -> None:
        handled.extend(messages)

    consumer_a = Consumer(client, group="g", shards=SHARDS, handler=handle, consumer="g-a", ownership=a)
    consumer_b = Consumer(client, group="g", shards=SHARDS, handler=handle, consumer="g-b", ownership=b)
    await consumer_a.ensure_groups()
    leads = [f"lead-{i}" for i in range(40)]
    await Publisher(client, SHARDS).publish(
        [BusMessage(id=f"{lead}:{n}", lead_id=lead, type="page_viewed") for n in range(3) for lead in leads])
    # a reads every shard and dies before handling what it read (its entries stay pending under its name).
    for shard in range(SHARDS):
        await client.xreadgroup("g", "g-a", {stream_key(shard): ">"}, count=1000)
    await client.zrem(members_key("g"), "a")
    for p in range(SHARDS):
        await client.delete(lease_key("g", p))
    assert await b.tick() == (set(range(SHARDS)), set())
    assert await consumer_b.drain() == len(leads) * 3
    assert sorted(m.id for m in handled) == sorted(f"{lead}:{n}" for lead in leads for n in range(3))
    for lead in leads:
        assert [m.id for m in handled if m.lead_id == lead] == [f"{lead}:{n}" for n in range(3)]
    assert await consumer_b.drain() == 0  # acknowledged: nothing pending anywhere
    assert sum([int((await client.xpending(stream_key(s), "g"))["pending"]) for s in range(SHARDS)]) == 0
    await client.aclose()
