"""Two analytics consumers in one group, folding side by side into one database, as two replicas do: each
folds only the partitions it owns (nurture.partitions), so a message's facts (its send, its opens, its
clicks) are folded by one of them, in order, and no open or click is counted twice. Without ownership
the two read the same shards, fold one message's opens in two transactions at once, and on PostgreSQL
each sees the message not opened yet: one open counted twice (run with NURTURE_TEST_DATABASE_URL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from nurture import redisconn
from nurture.bus import Consumer, Publisher
from nurture.busmessage import BusMessage, LeadSnapshot
from nurture.clock import RealClock
from nurture.db import Database, open_database
from nurture.partitions import Fenced, Ownership, lease_key, members_key
from nurture.redisconn import AsyncRedis
from nurture.settings import Settings
from services.analytics import tables
from services.analytics.app.core import ReadModel, load_costs
from services.analytics.server import MIGRATIONS

pytestmark = pytest.mark.anyio
LEADS = 60
OPENS, CLICKS = 3, 2  # per message, each its own event


@pytest.fixture
async def two(settings: Settings) -> AsyncIterator[tuple[list[Database], AsyncRedis]]:
    dbs = [open_database(settings, service="analytics", migrations_dir=MIGRATIONS) for _ in range(2)]
    client = redisconn.connect(settings)
    yield dbs, client
    await client.aclose()
    for db in dbs:
        db.close()


def _history(start_iso: str) -> list[BusMessage]:
    out: list[BusMessage] = []
    for n in range(LEADS):
        lead = f"a{n:03d}"
        snapshot = LeadSnapshot.from_dict({"id": lead, "segment": "family", "score": 10})
        props = {"message_id": f"m-{lead}", "journey": "family", "template": "family.email_01", "stage": "welcome"}
        kinds = ["email_sent"] + ["email_opened"] * OPENS + ["email_clicked"] * CLICKS
        out += [BusMessage(id=f"{lead}-{i}", lead_id=lead, type=kind, properties=props, occurred_at=start_iso,
                           lead=snapshot) for i, kind in enumerate(kinds)]
    return out


def _totals(db: Database) -> tuple[int, int, int]:
    with db.session() as s:
        e = tables.engagement
        row = s.execute(select(func.sum(e.c.sent), func.sum(e.c.opened), func.sum(e.c.clicked))).one()
    return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)


async def test_two_consumers_of_one_group_never_count_a_message_twice(
        settings: Settings, two: tuple[list[Database], AsyncRedis]) -> None:
    dbs, client = two
    owners = [Ownership(client, db, tables.partitions, group="analytics", partitions=settings.bus_shards,
                        owner=name, lease_ms=10_000) for db, name in zip(dbs, ("a", "b"), strict=True)]
    for o in (owners[0], owners[1], owners[0], owners[1]):  # a takes all, b joins, a gives half up, b takes it
        await o.tick()
    assert owners[0].owned() | owners[1].owned() == set(range(settings.bus_shards))
    assert not owners[0].owned() & owners[1].owned()
    clock = RealClock()
    consumers = [Consumer(client, group="analytics", shards=settings.bus_shards, consumer=name, batch=4, linger=0,
                          handler=ReadModel(db, clock, load_costs(), o).handle_messages, ownership=o)
                 for db, o, name in zip(dbs, owners, ("a", "b"), strict=True)]
    for c in consumers:
        await c.ensure_groups()
    await Publisher(client, settings.bus_shards).publish(
        _history((clock.now() - timedelta(hours=1)).isoformat()))
    # Both drain at once, a few entries per read: their transactions interleave.
    done = await asyncio.gather(*(c.drain() for c in consumers))
    assert sum(done) == LEADS * (1 + OPENS + CLICKS)
    assert all(done)  # each folded its share
    assert _totals(dbs[0]) == (LEADS, LEADS, LEADS)  # one send, one open, one click per message


async def test_a_replica_whose_partitions_were_taken_folds_nothing(
        settings: Settings, two: tuple[list[Database], AsyncRedis]) -> None:
    dbs, client = two
    a, b = (Ownership(client, db, tables.partitions, group="analytics", partitions=settings.bus_shards,
                      owner=name, lease_ms=10_000) for db, name in zip(dbs, ("a", "b"), strict=True))
    await a.tick()
    # a's leases vanish behind its back (a Redis failover that lost them); b takes every partition.
    await client.zrem(members_key("analytics"), "a")
    await client.delete(*[lease_key("analytics", p) for p in range(settings.bus_shards)])
    await b.tick()
    history = _history(RealClock().now().isoformat())
    with pytest.raises(Fenced):
        await ReadModel(dbs[0], RealClock(), load_costs(), a).handle_messages(history)
    assert _totals(dbs[0]) == (0, 0, 0)
    with dbs[0].session() as s:
        assert s.scalar(select(func.count()).select_from(tables.facts)) == 0  # not even recorded
    await ReadModel(dbs[1], RealClock(), load_costs(), b).handle_messages(history)
    assert _totals(dbs[0]) == (LEADS, LEADS, LEADS)
