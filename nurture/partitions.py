"""Partition ownership across a service's replicas: leases in Redis, fencing epochs in SQL.

A service whose work for one key must run in one place at a time (journeys: a lead's bus messages and
timers; analytics: the fold of a lead's facts) splits its keys into `partitions` (crc32 of the key, as
the bus shards are) and lets one replica at a time own each partition:

- **Lease (Redis: who should work).** `nurture:partitions:{<group>}:<p>` holds the owner's name with
  an expiry, renewed every lease/3. Replicas announce themselves in `nurture:partitions:{<group>}:members`,
  a sorted set scored by expiry; partition p is wanted by the (p mod n)-th live member in name order, so
  partitions spread evenly and move only when a member comes or goes. A replica gives up what another
  live member wants and takes what is free and wanted by it; a dead replica's leases and membership run
  out and its partitions go to the others. A replica's name is stable across restarts (host and
  `NURTURE_REPLICA`), so a restarted one takes its own leases back at once. Every key of a group shares
  the hash tag `{<group>}`: one slot, so on a Redis Cluster no command or script spans two.
- **Fencing (SQL: who may commit).** Taking a partition adds one to its epoch in `<service>_partitions`
  (unless this same process held it last and the epoch is still its own: a lease that ran out under
  load and came back with no other replica in between keeps its epoch and its work in flight).
  Every transaction doing a partition's work calls `check` last: it reads the partitions' rows
  `FOR SHARE` and refuses (`Fenced`: the transaction rolls back) unless each epoch is still the one this
  process took. A process that paused past its lease (a long GC, SIGSTOP, a VM migration) and wakes up
  holds an older epoch once another replica has taken the partition, so nothing it does commits. The
  share lock makes the check one with the commit: the taker's epoch UPDATE waits until transactions
  that passed the check have committed, and a check after it sees the new epoch. (SQLite ignores
  FOR SHARE, but its one writer serialises the same way: the check runs after the transaction's writes.)
- **Erasure (SQL: who may forget a lead).** An erasure may reach any replica, not the lead's owner, and
  the owner may be between reading the lead and writing it back: its write would bring the erased rows
  back. So each transaction doing a partition's work first takes a shared transaction lock on the
  partition (`shield`, before it reads a lead), and an erasure takes it exclusively (`erasing`). The
  erasure waits for the work in flight to commit, and work that starts after the erasure reads the lead
  as erased. Work that reads in one transaction and writes in a later one (journeys' timers, which call
  other services in between) checks under the shared lock that the lead is still there. (PostgreSQL
  advisory locks, one per partition, so a batch of many leads takes a few; SQLite's one writer and the
  in-process lead locks serialise the same work, and replicas run on PostgreSQL.)
- **Local deadline.** A process also counts each lease down on its own monotonic clock, from the moment
  before its last successful renewal: past `lease - margin` it treats the partition as lost, so a
  paused process that wakes up stops starting work and sending (`require`) before Redis could tell it.

One replica alone wants and owns every partition: it works as a single process always did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, select, text, update
from sqlalchemy.orm import Session

from nurture.db import Database, insert_new
from nurture.locks import RELEASE_IF_HELD
from nurture.redisconn import AsyncRedis, shard_of

log = logging.getLogger(__name__)

# A partition's lease is treated as lost locally this share of the lease before Redis expires it.
LOCAL_MARGIN = 0.25
RENEWALS_PER_LEASE = 3

_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# gained, lost: the partitions that changed hands at one tick.
ChangeHook = Callable[[set[int], set[int]], Awaitable[None]]


class Fenced(Exception):
    """This process no longer owns a partition it worked on: its transaction is refused and nothing of
    that work may be sent or committed (the partition's owner does it)."""


def partitions_table(metadata: MetaData, service: str) -> Table:
    """`<service>_partitions`: one row per partition, its fencing epoch and who took it last."""
    return Table(f"{service}_partitions", metadata,
                 Column("part", Integer, primary_key=True, autoincrement=False),
                 Column("epoch", BigInteger, nullable=False),
                 Column("owner", String(200), nullable=False))


def lease_key(group: str, partition: int) -> str:
    return f"nurture:partitions:{{{group}}}:{partition}"


def members_key(group: str) -> str:
    return f"nurture:partitions:{{{group}}}:members"


def replica_name(replica: str) -> str:
    """A replica's name in its group: stable across its restarts, different from its siblings'."""
    return f"{socket.gethostname()}-{replica}"


def wanted_by(members: list[str], partitions: int) -> dict[int, str]:
    """Which live member wants each partition: the (p mod n)-th in name order."""
    ordered = sorted(set(members))
    return {p: ordered[p % len(ordered)] for p in range(partitions)} if ordered else {}


class Ownership:
    """The partitions this process owns in its group, kept by `tick` (`run` calls it every lease/3)."""

    def __init__(self, client: AsyncRedis, db: Database, table: Table, *, group: str, partitions: int,
                 owner: str, lease_ms: int) -> None:
        if partitions < 1:
            raise ValueError("partitions must be positive")
        self._redis = client
        self._db = db
        self._table = table
        self.group = group
        self.partitions = partitions
        self.owner = owner
        self.lease_ms = lease_ms
        self._epochs: dict[int, int] = {}  # partition -> the epoch this process took it at
        # partition -> the last epoch this process held, kept after it lost the partition: taking it back
        # with nobody's epoch in between (a lease that ran out under load, no other replica came) keeps
        # that epoch, so its own work in flight still commits (see _bump).
        self._held: dict[int, int] = {}
        self._valid_until: dict[int, float] = {}  # partition -> monotonic deadline of the local lease
        self._hooks: list[ChangeHook] = []
        # The advisory locks' first key: the group's, so two services' partition numbers never meet.
        self._lock_space = zlib.crc32(group.encode()) - (1 << 31)
        self._lock = asyncio.Lock()
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(RELEASE_IF_HELD)

    # -- what a worker asks ---------------------------------------------------------------------------

    def partition_of(self, key: str) -> int:
        return shard_of(key, self.partitions)

    def owned(self) -> set[int]:
        """The partitions owned now (their local lease not run out)."""
        now = time.monotonic()
        return {p for p, until in self._valid_until.items() if until > now}

    def owns(self, partition: int) -> bool:
        return self._valid_until.get(partition, 0.0) > time.monotonic()

    def require(self, partitions: Iterable[int]) -> dict[int, int]:
        """The epochs of `partitions`, all owned now; Fenced when one is not (never taken, given up, or
        its local lease ran out: a pause the process has just woken from)."""
        out: dict[int, int] = {}
        for p in sorted(set(partitions)):
            epoch = self._epochs.get(p)
            if epoch is None or not self.owns(p):
                raise Fenced(f"{self.group}: partition {p} is not owned by {self.owner}")
            out[p] = epoch
        return out

    def check(self, session: Session, partitions: Iterable[int]) -> None:
        """The fencing check: call it last in a transaction doing these partitions' work. Raises Fenced
        (the transaction rolls back) unless each partition's stored epoch is still the one this process
        took; the rows stay share-locked to the commit, so no replica takes them in between."""
        want = self.require(partitions)
        if not want:
            return
        t = self._table
        rows = session.execute(select(t.c.part, t.c.epoch).where(t.c.part.in_(sorted(want)))
                               .order_by(t.c.part).with_for_update(read=True)).all()
        stored = {int(r.part): int(r.epoch) for r in rows}
        stale = sorted(p for p, epoch in want.items() if stored.get(p) != epoch)
        if stale:
            raise Fenced(f"{self.group}: partitions {stale} were taken by another replica since {self.owner} "
                         f"took them (epochs {[want[p] for p in stale]} against {[stored.get(p) for p in stale]})")

    def shield(self, session: Session, partitions: Iterable[int]) -> bool:
        """Hold off the erasure of any lead of `partitions` until this transaction ends: call it first in a
        transaction doing their work, before it reads a lead. True when it took the locks (PostgreSQL): a
        transaction that read its leads in an earlier one must then check they are still there."""
        wanted = sorted(set(partitions))
        if not wanted or session.get_bind().dialect.name != "postgresql":
            return False
        session.execute(text("SELECT pg_advisory_xact_lock_shared(:space, p) FROM unnest(CAST(:parts AS int[])) AS p"),
                        {"space": self._lock_space, "parts": wanted})
        return True

    def erasing(self, session: Session, key: str) -> None:
        """Call it first in the transaction that erases `key`'s rows: it waits for the work of the key's
        partition in flight on any replica to commit, and holds off new work until the erasure commits."""
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:space, :part)"),
                            {"space": self._lock_space, "part": self.partition_of(key)})

    def on_change(self, hook: ChangeHook) -> None:
        """Call `hook(gained, lost)` after a tick that changed what this process owns."""
        self._hooks.append(hook)

    # -- keeping the leases -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the leases for as long as the process lives."""
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("partitions %s: tick failed; retrying", self.group)
            await asyncio.sleep(self.lease_ms / 1000 / RENEWALS_PER_LEASE)

    async def tick(self) -> tuple[set[int], set[int]]:
        """Announce this replica, renew what it keeps, give up what another live replica wants, take what
        is free and wanted by it; returns (gained, lost) and tells the hooks."""
        async with self._lock:
            gained, lost = await self._tick()
        if gained or lost:
            log.info("partitions %s: %s gained %s, lost %s; owns %s", self.group, self.owner, sorted(gained),
                     sorted(lost), sorted(self.owned()))
            for hook in self._hooks:
                await hook(gained, lost)
        return gained, lost

    async def _tick(self) -> tuple[set[int], set[int]]:
        now_ms = int(time.time() * 1000)
        key = members_key(self.group)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(key, {self.owner: now_ms + self.lease_ms})
        pipe.zremrangebyscore(key, "-inf", now_ms)
        pipe.zrange(key, 0, -1)
        *_, raw = await pipe.execute()
        members = [m.decode() if isinstance(m, bytes) else str(m) for m in raw] + [self.owner]
        wants = wanted_by(members, self.partitions)
        gained: set[int] = set()
        lost: set[int] = set()
        for p in sorted(self._epochs):
            if wants.get(p) != self.owner:
                self._drop(p)
                lost.add(p)
                await self._release(keys=[lease_key(self.group, p)], args=[self.owner])
                continue
            started = time.monotonic()
            if await self._renew(keys=[lease_key(self.group, p)], args=[self.owner, self.lease_ms]):
                self._valid_until[p] = started + self._local_lease_s()
            else:  # the lease ran out and another replica took it (this one paused or was cut off)
                self._drop(p)
                lost.add(p)
        for p in sorted(p for p, who in wants.items() if who == self.owner and p not in self._epochs):
            started = time.monotonic()
            if not await self._take(keys=[lease_key(self.group, p)], args=[self.owner, self.lease_ms]):
                continue  # its last owner's lease has not run out yet
            epoch = await self._db.run(self._bump, p, self._held.get(p))
            self._epochs[p] = self._held[p] = epoch
            self._valid_until[p] = started + self._local_lease_s()
            gained.add(p)
        return gained, lost

    def _local_lease_s(self) -> float:
        return self.lease_ms / 1000 * (1 - LOCAL_MARGIN)

    def _drop(self, partition: int) -> None:
        self._epochs.pop(partition, None)
        self._valid_until.pop(partition, None)

    def _bump(self, partition: int, held: int | None = None) -> int:
        """Fence every earlier owner out: the partition's epoch plus one (waiting for their transactions
        that passed the check to commit), which this process's transactions now present. Unless the
        stored epoch is still `held`, the one this very process last held: then no other replica took
        the partition since (taking bumps it), nobody else can hold that epoch, and keeping it lets this
        process's own batch in flight commit instead of being fenced and done again. A restarted process
        remembers nothing and bumps, which fences out a paused earlier incarnation of the same name."""
        t = self._table
        with self._db.session() as s:
            s.execute(insert_new(s, t, ["part"]).values(part=partition, epoch=0, owner=""))
            if held is not None:
                row = s.execute(select(t.c.epoch, t.c.owner).where(t.c.part == partition).with_for_update()).one()
                if int(row.epoch) == held and row.owner == self.owner:
                    return held
            s.execute(update(t).where(t.c.part == partition).values(epoch=t.c.epoch + 1, owner=self.owner))
            return int(s.scalar(select(t.c.epoch).where(t.c.part == partition)) or 0)

    async def release_all(self) -> None:
        """Give every partition up and leave the group (a clean stop): the others take them at their next
        tick instead of after the lease."""
        async with self._lock:
            held = sorted(self._epochs)
            for p in held:
                self._drop(p)
            with contextlib.suppress(Exception):  # stopping: a Redis gone away leaves leases to run out
                await self._redis.zrem(members_key(self.group), self.owner)
                for p in held:
                    await self._release(keys=[lease_key(self.group, p)], args=[self.owner])
