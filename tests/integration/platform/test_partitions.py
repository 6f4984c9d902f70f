"""Partition ownership (nurture.partitions) on a real Redis and the test's database (SQLite, or PostgreSQL
with NURTURE_TEST_DATABASE_URL): leases spread the partitions over live replicas, and the fencing
check refuses the commit of a replica whose partition was taken, whatever its lease told it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from sqlalchemy import delete, select, text

from nurture.db import Database, open_database
from nurture.partitions import Fenced, Ownership, lease_key, members_key
from nurture.settings import Settings
from services.journeys import storage

pytestmark = pytest.mark.anyio
MIGRATIONS = Path(storage.__file__).with_name("migrations")
GROUP = "journeys"
on_postgres = pytest.mark.skipif(not os.environ.get("NURTURE_TEST_DATABASE_URL"),
                                 reason="erasure locks are PostgreSQL's: SQLite has one writer process")


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = open_database(settings, service="journeys", migrations_dir=MIGRATIONS)
    yield database
    database.close()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(settings.redis_url)
    yield r
    await r.aclose()


def _owner(client: aioredis.Redis, db: Database, name: str, lease_ms: int = 10_000) -> Ownership:
    return Ownership(client, db, storage.PARTITIONS, group=GROUP, partitions=4, owner=name, lease_ms=lease_ms)


def _write(db: Database, who: Ownership, key: str, partitions: set[int]) -> Callable[[], None]:
    def work() -> None:
        with db.session() as s:
            s.merge(storage.MetaRow(key=key, value=who.owner))
            who.check(s, partitions)
    return work


def _written(db: Database, key: str) -> str | None:
    with db.session() as s:
        return s.scalar(select(storage.MetaRow.value).where(storage.MetaRow.key == key))


async def _steal(client: aioredis.Redis, victim: Ownership) -> None:
    """What a Redis failover that lost the last writes does: the victim's membership and leases vanish
    while it still believes it holds them."""
    await client.zrem(members_key(GROUP), victim.owner)
    await client.delete(*[lease_key(GROUP, p) for p in range(victim.partitions)])


async def test_partitions_spread_over_live_replicas_and_pass_on_when_one_leaves(
        client: aioredis.Redis, db: Database) -> None:
    a, b = _owner(client, db, "a"), _owner(client, db, "b")
    assert await a.tick() == ({0, 1, 2, 3}, set())  # alone: every partition, as one process
    assert await b.tick() == (set(), set())  # b wants 1 and 3, still a's
    assert await a.tick() == (set(), {1, 3})  # a gives up what the other live replica wants
    assert await b.tick() == ({1, 3}, set())
    assert (a.owned(), b.owned()) == ({0, 2}, {1, 3})
    await a.release_all()  # a clean stop: b takes the rest at its next tick, without waiting for a lease
    assert await b.tick() == ({0, 2}, set())
    assert b.owned() == {0, 1, 2, 3}
    await asyncio.to_thread(_write(db, b, "k", {0, 1, 2, 3}))
    assert _written(db, "k") == "b"


async def test_a_replica_whose_partition_was_taken_cannot_commit(client: aioredis.Redis, db: Database) -> None:
    a, b = _owner(client, db, "a"), _owner(client, db, "b")
    await a.tick()
    await db.run(_write(db, a, "before", {0, 1}))
    assert _written(db, "before") == "a"
    await _steal(client, a)
    assert await b.tick() == ({0, 1, 2, 3}, set())
    assert a.owns(0)  # its own lease has not run out: only the epoch in SQL can stop it
    with pytest.raises(Fenced, match=r"partitions \[0\] were taken"):
        await db.run(_write(db, a, "after", {0}))
    assert _written(db, "after") is None  # rolled back
    await db.run(_write(db, b, "after", {0}))
    assert _written(db, "after") == "b"
    # a learns it at its next tick, and asks for nothing back while b lives
    assert await a.tick() == (set(), {0, 1, 2, 3})


async def test_a_paused_replica_stops_on_its_own_clock(client: aioredis.Redis, db: Database) -> None:
    a = _owner(client, db, "a", lease_ms=400)
    await a.tick()
    assert a.owned() == {0, 1, 2, 3}
    await asyncio.sleep(0.35)  # a pause longer than the lease less its margin, with no renewal in it
    assert a.owned() == set()
    with pytest.raises(Fenced, match="not owned"):
        a.require([2])
    with pytest.raises(Fenced):
        await db.run(_write(db, a, "late", {2}))
    assert _written(db, "late") is None


async def test_a_lease_run_out_with_nobody_taking_it_comes_back_at_the_same_epoch(
        client: aioredis.Redis, db: Database) -> None:
    # A lone replica under heavy load can renew after its lease ran out in Redis. Taken back with no other
    # replica's epoch in between, each partition keeps its epoch, so the batch it had in flight (checked
    # at its commit) still commits instead of being folded again. A restart, same name and no memory,
    # bumps the epochs: an earlier incarnation paused somewhere stays fenced out.
    a = _owner(client, db, "a", lease_ms=400)
    await a.tick()
    epochs = a.require(range(4))
    await asyncio.sleep(0.6)  # past the lease in Redis as well as locally
    assert await a.tick() == ({0, 1, 2, 3}, {0, 1, 2, 3})
    assert a.require(range(4)) == epochs
    await db.run(_write(db, a, "in flight", {0, 1}))
    assert _written(db, "in flight") == "a"
    await asyncio.sleep(0.6)
    restarted = _owner(client, db, "a", lease_ms=400)
    await restarted.tick()
    assert restarted.require(range(4)) == {p: e + 1 for p, e in epochs.items()}


def _erase(db: Database, who: Ownership, key: str) -> None:
    with db.session() as s:
        who.erasing(s, key)
        s.execute(delete(storage.MetaRow).where(storage.MetaRow.key == key))


def _write_if_there(db: Database, who: Ownership, key: str) -> bool:
    """Work that read the lead in an earlier transaction writes it back only if it is still there."""
    with db.session() as s:
        assert who.shield(s, {who.partition_of(key)})
        if s.scalar(select(storage.MetaRow.value).where(storage.MetaRow.key == key)) is None:
            return False
        s.merge(storage.MetaRow(key=key, value="written back"))
        return True


async def _until_a_lock_waits(db: Database) -> None:
    for _ in range(200):
        with db.session() as s:
            if s.scalar(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")):
                return
        await asyncio.sleep(0.05)
    raise AssertionError("no transaction waited on the partition's erasure lock")


@on_postgres
async def test_an_erasure_on_another_replica_waits_for_the_owners_work_in_flight(
        client: aioredis.Redis, db: Database) -> None:
    owner, other = _owner(client, db, "a"), _owner(client, db, "b")
    key = "erased-lead"
    with db.session() as work:
        assert owner.shield(work, {owner.partition_of(key)})  # first in the owner's transaction
        erasure = asyncio.get_running_loop().run_in_executor(None, _erase, db, other, key)
        await _until_a_lock_waits(db)
        assert not erasure.done()
        work.merge(storage.MetaRow(key=key, value="the owner's write"))
    await erasure  # after the owner's commit: what it wrote is erased too
    assert _written(db, key) is None


@on_postgres
async def test_work_that_starts_during_an_erasure_finds_the_lead_gone(client: aioredis.Redis, db: Database) -> None:
    owner, other = _owner(client, db, "a"), _owner(client, db, "b")
    key = "erased-lead"
    await asyncio.get_running_loop().run_in_executor(None, _write(db, owner, key, set()))
    with db.session() as erasure:
        other.erasing(erasure, key)
        work = asyncio.get_running_loop().run_in_executor(None, _write_if_there, db, owner, key)
        await _until_a_lock_waits(db)
        erasure.execute(delete(storage.MetaRow).where(storage.MetaRow.key == key))
    assert await work is False
    assert _written(db, key) is None


async def test_without_postgresql_the_shield_takes_no_lock(client: aioredis.Redis, db: Database) -> None:
    """SQLite: one writer process, whose in-process lead locks serialise its work and its erasures."""
    owner = _owner(client, db, "a")
    with db.session() as s:
        assert owner.shield(s, {0, 1}) is (s.get_bind().dialect.name == "postgresql")
        assert owner.shield(s, []) is False
