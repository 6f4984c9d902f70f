"""The journeys work loop under partition ownership, in process: a replica whose partition another one
has taken commits nothing of a bus batch (the fencing check ends its transaction), and the owner's
commit of the same messages goes through; two replicas each fire a campaign to their own partitions'
leads, once; a replica learns the versions another one published."""

from __future__ import annotations

import json
import math
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
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
from services.journeys.domain.state import Outcome
from services.journeys.timers import TimerStore
from tests.integration.journeys.fakes import lead

pytestmark = pytest.mark.anyio
MIGRATIONS = Path(storage.__file__).with_name("migrations")
SPRING = datetime(2027, 3, 1, 9, tzinfo=UTC)  # canada_express_entry_2027_spring in _calendar.yaml
CAMPAIGN = "canada_express_entry_2027_spring"


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


async def _split(a: JourneysRuntime, b: JourneysRuntime) -> None:
    assert a.ownership is not None and b.ownership is not None
    for o in (a.ownership, b.ownership, a.ownership, b.ownership):  # a takes all, b joins, a gives half up
        await o.tick()
    assert a.ownership.owned() and b.ownership.owned()
    await a.start()
    await b.start()


async def test_each_replica_fires_a_campaign_to_the_leads_of_its_own_partitions_once(
        settings: Settings, parts: tuple[Database, AsyncRedis]) -> None:
    db, client = parts
    a, b = _runtime(settings, db, client, "a"), _runtime(settings, db, client, "b")
    await _split(a, b)
    assert a.ownership is not None
    a.clock.set(SPRING - timedelta(days=1))  # type: ignore[attr-defined]
    now = a.clock.now().isoformat()
    leads = [f"ca{n:02d}" for n in range(40)]
    created = {lead_id: BusMessage(id=f"created-{lead_id}", lead_id=lead_id, type="lead_created", occurred_at=now,
                                   lead=LeadSnapshot.from_dict(lead(lead_id, countries_of_interest=["CA"])))
               for lead_id in leads}
    for rt in (a, b):
        assert rt.ownership is not None
        own = rt.ownership
        await rt.handle_messages([m for lead_id, m in created.items() if own.partition_of(lead_id) in own.owned()])
    a.clock.set(SPRING + timedelta(minutes=1))  # type: ignore[attr-defined]
    reached_a = await a.run_calendar()
    assert await a.run_calendar() == 0  # done for a's partitions
    assert await a.next_campaign() != SPRING  # and not due for a any more, while b has not fired it yet
    reached_b = await b.run_calendar()
    assert reached_a and reached_b and reached_a + reached_b == len(leads)
    with db.session() as s:
        fired = set(s.scalars(select(storage.ProcessedRow.message_id)
                              .where(storage.ProcessedRow.message_id.like("calendar:%"))))
    assert fired == {f"calendar:{CAMPAIGN}:{lead_id}" for lead_id in leads}
    assert await b.run_calendar() == 0


async def test_a_replica_learns_the_versions_another_one_published(
        settings: Settings, parts: tuple[Database, AsyncRedis]) -> None:
    db, client = parts
    a, b = _runtime(settings, db, client, "a"), _runtime(settings, db, client, "b")
    await _split(a, b)
    family = b.registry.live("family")
    assert family is not None
    assert not await b.refresh_definitions()  # nothing changed: one small read, no reload

    def publish_on_a() -> int:  # what a's Publish call stores
        doc = json.loads(json.dumps(a.get("family", 0)[0].document))
        with db.session() as s:
            return storage.add_definition(s, key="family", document={**doc, "name": "Family v2"}, source="api",
                                          now=a.clock.now(), publish=True).version
    version = await db.run(publish_on_a)
    assert await b.refresh_definitions()
    live = b.registry.live("family")
    assert live is not None and live.version == version > family.version
    assert b.meta["family"][family.version].status == "retired"


def _versions(db: Database, journey: str) -> dict[str, int]:
    """The version of each live enrolment in the journey, by lead."""
    with db.session() as s:
        return {r.lead_id: r.version for r in storage.live_of(s, journey)}


async def _family_leads(a: JourneysRuntime, b: JourneysRuntime, n: int) -> list[str]:
    """n family leads, each created (and enrolled in family) by the replica owning its partition."""
    now = a.clock.now().isoformat()
    leads = [f"fm{i:02d}" for i in range(n)]
    for rt in (a, b):
        assert rt.ownership is not None
        own = rt.ownership
        await rt.handle_messages([BusMessage(id=f"created-{lead_id}", lead_id=lead_id, type="lead_created",
                                             occurred_at=now, lead=LeadSnapshot.from_dict(lead(lead_id, "family")))
                                  for lead_id in leads if own.partition_of(lead_id) in own.owned()])
    return leads


def _store_version(rt: JourneysRuntime, db: Database, key: str) -> int:
    """A new draft of the journey (what a PutJourney call stores), not yet published."""
    doc = json.loads(json.dumps(rt.get(key, 0)[0].document))
    with db.session() as s:
        return storage.add_definition(s, key=key, document={**doc, "name": f"{doc['name']} v2"}, source="api",
                                      now=rt.clock.now(), publish=False).version


async def test_a_publish_with_migrate_moves_each_replicas_own_leads_on_that_replica(
        settings: Settings, parts: tuple[Database, AsyncRedis]) -> None:
    """The replica taking the call moves the leads of its partitions; the other replica's leads stay where
    they are until their owner carries the recorded migration out (its writes fenced by its own epochs)."""
    db, client = parts
    a, b = _runtime(settings, db, client, "a"), _runtime(settings, db, client, "b")
    await _split(a, b)
    assert a.ownership is not None and b.ownership is not None
    leads = await _family_leads(a, b, 24)
    assert set(_versions(db, "family")) == set(leads) and set(_versions(db, "family").values()) == {1}
    v2 = _store_version(a, db, "family")
    await a.refresh_definitions()
    report = await a.publish("family", v2, migrate_leads=True, mapping={}, dry_run=False)
    assert sum(report["moved"].values()) == len(leads)  # what the publication moves, wherever it is moved
    ours = {x for x in leads if a.ownership.partition_of(x) in a.ownership.owned()}
    assert ours and ours != set(leads)
    versions = _versions(db, "family")
    assert {x for x, v in versions.items() if v == v2} == ours  # b's leads: not written by a
    assert await b.run_migrations() == len(leads) - len(ours)  # b learns of it and moves its own
    assert set(_versions(db, "family").values()) == {v2}
    assert await a.run_migrations() == 0 and await b.run_migrations() == 0  # done, per partition
    with db.session() as s:
        done = set(s.execute(select(storage.MigrationDoneRow.part)).scalars())
    assert done == a.ownership.owned() | b.ownership.owned()


async def test_a_publish_with_migrate_on_a_fenced_out_replica_leaves_the_moves_to_the_owner(
        settings: Settings, parts: tuple[Database, AsyncRedis]) -> None:
    """A replica whose partitions were taken behind its back (it does not know yet) takes the Publish call:
    the publication is recorded, but it writes no lead; the owner moves them all."""
    db, client = parts
    a, b = _runtime(settings, db, client, "a"), _runtime(settings, db, client, "b")
    assert a.ownership is not None and b.ownership is not None
    await a.ownership.tick()
    await a.start()
    await b.start()
    leads = await _family_leads(a, b, 12)
    await client.zrem(members_key("journeys"), "a")
    await client.delete(*[lease_key("journeys", p) for p in range(a.ownership.partitions)])
    await b.ownership.tick()
    assert a.ownership.owned() == b.ownership.owned() == set(range(a.ownership.partitions))  # a does not know
    v2 = _store_version(a, db, "family")
    await a.refresh_definitions()
    await a.publish("family", v2, migrate_leads=True, mapping={}, dry_run=False)
    assert set(_versions(db, "family").values()) == {1}
    assert b.registry.live("family") is not None
    assert await b.run_migrations() == len(leads)
    assert set(_versions(db, "family").values()) == {v2}
    assert b.registry.live("family").version == v2  # type: ignore[union-attr]


async def test_timers_whose_arming_no_replica_confirmed_are_armed_again_from_sql(
        settings: Settings, parts: tuple[Database, AsyncRedis]) -> None:
    """Timers are armed after the state's commit. When Redis does not confirm them on a replica (this Redis
    has none: WAIT answers 0), a failover could lose them: the runtime keeps the lead and arms its timers
    again from SQL, until an arming is confirmed."""
    db, client = parts
    rt = JourneysRuntime(db=db, timers=TimerStore(client, settings.timer_shards, wait_replicas=1),
                         clock=VirtualClock(redisconn.connect_sync(settings)), clients=Clients(settings),
                         settings=read_settings(), calendar=load_calendar())
    await rt.start()
    now = rt.clock.now().isoformat()
    await rt.handle_messages([BusMessage(id="created-w1", lead_id="w1", type="lead_created", occurred_at=now,
                                         lead=LeadSnapshot.from_dict(lead("w1", "family")))])  # no exception
    armed = await rt.timers.pending()
    assert armed > 0
    await client.flushdb()  # what a failover to a replica that never got the arms would leave
    assert await rt.timers.pending() == 0
    rt.timers = TimerStore(client, settings.timer_shards)  # a replica confirms again (none needed here)
    assert await rt.rearm_unarmed() == 1
    assert await rt.timers.pending() == armed
    assert await rt.rearm_unarmed() == 0  # confirmed: nothing left to arm again


@pytest.mark.skipif(not os.environ.get("NURTURE_TEST_DATABASE_URL"),
                    reason="replicas run on PostgreSQL; SQLite's one process serialises erasures with its lead locks")
async def test_a_timer_batch_does_not_bring_back_a_lead_another_replica_erased(
        settings: Settings, parts: tuple[Database, AsyncRedis]) -> None:
    db, client = parts
    a = _runtime(settings, db, client, "a")
    b = _runtime(settings, db, client, "b")
    assert a.ownership is not None
    await a.ownership.tick()
    await a.start()
    now = a.clock.now()
    await a.handle_messages([BusMessage(id="created-e1", lead_id="e1", type="lead_created", occurred_at=now.isoformat(),
                                        lead=LeadSnapshot.from_dict(lead("e1", "family")))])
    assert _leads(db) == 1
    # a's timer batch has read the lead and is calling other services; meanwhile the erasure reaches b.
    states = await a.db.run(a._load_many, ["e1"])
    assert await b.erase("e1") > 0
    written = await a.db.run(a._save_many, [(states["e1"], Outcome())], now)
    assert written == []
    assert _leads(db) == 0


async def test_a_bus_batch_arms_every_leads_timers_and_re_arms_them_all_when_unconfirmed(
        settings: Settings, parts: tuple[Database, AsyncRedis]) -> None:
    """A batch's leads have their timers armed together (one round trip): each lead gets its own, and when
    the arming is not confirmed every lead of the batch is armed again from SQL, not only one."""
    db, client = parts
    rt = JourneysRuntime(db=db, timers=TimerStore(client, settings.timer_shards, wait_replicas=1),
                         clock=VirtualClock(redisconn.connect_sync(settings)), clients=Clients(settings),
                         settings=read_settings(), calendar=load_calendar())
    await rt.start()
    now = rt.clock.now().isoformat()
    ids = ["b1", "b2", "b3"]
    await rt.handle_messages([BusMessage(id=f"created-{i}", lead_id=i, type="lead_created", occurred_at=now,
                                         lead=LeadSnapshot.from_dict(lead(i, "family"))) for i in ids])

    async def armed_leads() -> dict[str, int]:
        found: dict[str, int] = {}
        for shard in range(settings.timer_shards):
            for raw in await client.zrange(f"nurture:timers:{{t{shard}}}", 0, -1):
                found[raw.decode().split("|")[0]] = found.get(raw.decode().split("|")[0], 0) + 1
        return found

    first = await armed_leads()
    assert sorted(first) == ids and all(n > 0 for n in first.values())
    await client.flushdb()
    rt.timers = TimerStore(client, settings.timer_shards)
    assert await rt.rearm_unarmed() == 3
    assert await armed_leads() == first
    assert await rt.rearm_unarmed() == 0


async def test_an_archive_on_one_replica_stops_the_journey_on_every_replica(
        settings: Settings, parts: tuple[Database, AsyncRedis]) -> None:
    """Archiving is state in SQL: the replica taking the call exits the leads of its partitions, the other
    learns of the archive at its next look, exits its own and enters no one; brought back on one replica,
    the journey is live again on the other."""
    db, client = parts
    a, b = _runtime(settings, db, client, "a"), _runtime(settings, db, client, "b")
    await _split(a, b)
    assert a.ownership is not None and b.ownership is not None
    leads = await _family_leads(a, b, 24)
    ours = {x for x in leads if a.ownership.partition_of(x) in a.ownership.owned()}
    assert ours and ours != set(leads)
    assert await a.archive("family", True) == ("archived", 1, True)
    assert set(_versions(db, "family")) == set(leads) - ours   # b's leads: not written by a
    assert b.registry.live("family") is not None               # b has not looked yet
    assert await b.refresh_definitions()
    assert b.registry.live("family") is None
    assert {s.key: s.status for s in b.summaries()}["family"] == "archived"
    for o in (a.ownership, b.ownership):   # the leases renewed, as the loop does (a's exits asked messaging,
        await o.tick()                      # which is not running here, to withdraw their mail: slow)
    assert await b.run_migrations() == len(leads) - len(ours)
    assert _versions(db, "family") == {}
    with db.session() as s:
        reasons = set(s.scalars(select(storage.EnrollmentRow.outcome).where(storage.EnrollmentRow.journey == "family")))
    assert reasons == {"journey archived"}
    assert await a.run_migrations() == 0 and await b.run_migrations() == 0   # done, per partition
    late = await _family_leads(a, b, 30)   # fm24..fm29 are new: no replica enters them
    assert _versions(db, "family") == {} and len(late) == 30

    assert await b.archive("family", False) == ("published", 1, True)
    assert await a.refresh_definitions() and a.registry.live("family") is not None
    assert await a.archive("family", False) == ("published", 1, False)   # idempotent
