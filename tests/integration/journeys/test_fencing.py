"""The journeys work loop under partition ownership, in process: a replica whose partition another one
has taken commits nothing of a bus batch (the fencing check ends its transaction), and the owner's
commit of the same messages goes through."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from nurture import redisconn
from nurture.busmessage import BusMessage, LeadSnapshot
from nurture.clock import VirtualClock
from nurture.db import Database, open_database
from nurture.partitions import Fenced, Ownership, lease_key, members_key
from nurture.redisconn import AsyncRedis
from nurture.settings import Settings
from services.journeys import storage
from services.journeys.app.runner import JourneysRuntime
from services.journeys.clients import Clients
from services.journeys.domain.calendar import load_calendar
from services.journeys.domain.definitions import read_settings
from services.journeys.timers import TimerStore
from tests.integration.journeys.fakes import lead

pytestmark = pytest.mark.anyio
MIGRATIONS = Path(storage.__file__).with_name("migrations")


@pytest.fixture
async def parts(settings: Settings) -> AsyncIterator[tuple[Database, AsyncRedis]]:
    db = open_database(settings, service="journeys", migrations_dir=MIGRATIONS)
    client = redisconn.connect(settings)
    yield db, client
    await client.aclose()
    db.close()


def _runtime(settings: Settings, db: Database, client: AsyncRedis, owner: str) -> JourneysRuntime:
    ownership = Ownership(client, db, storage.PARTITIONS, group="journeys",
                          partitions=math.gcd(settings.bus_shards, settings.timer_shards), owner=owner,
                          lease_ms=10_000)
    clock = VirtualClock(redisconn.connect_sync(settings))
    return JourneysRuntime(db=db, timers=TimerStore(client, settings.timer_shards), clock=clock,
                           clients=Clients(settings), settings=read_settings(), calendar=load_calendar(),
                           ownership=ownership)


def _leads(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(storage.LeadRow)) or 0)


async def test_a_replica_that_lost_its_partitions_commits_no_bus_batch(
        settings: Settings, parts: tuple[Database, AsyncRedis]) -> None:
    db, client = parts
    a = _runtime(settings, db, client, "a")
    b = _runtime(settings, db, client, "b")
    assert a.ownership is not None and b.ownership is not None
    await a.ownership.tick()
    await a.start()
    now = a.clock.now().isoformat()
    messages = [BusMessage(id=f"created-{n}", lead_id=f"f{n}", type="lead_created", occurred_at=now,
                           lead=LeadSnapshot.from_dict(lead(f"f{n}", "family"))) for n in range(20)]
    # a's leases vanish behind its back (a Redis failover that lost them); b takes every partition.
    await client.zrem(members_key("journeys"), "a")
    await client.delete(*[lease_key("journeys", p) for p in range(a.ownership.partitions)])
    await b.ownership.tick()
    assert a.ownership.owned() == b.ownership.owned() == set(range(a.ownership.partitions))  # a does not know
    with pytest.raises(Fenced):
        await a.handle_messages(messages)
    assert _leads(db) == 0
    assert await a.timers.pending() == 0  # nothing armed for work that did not commit
    await b.start()
    await b.handle_messages(messages)
    assert _leads(db) == 20
    assert await b.timers.pending() > 0
