"""Durable timers in Redis: sorted sets sharded by lead (`nurture:timers:{t<N>}`), claimed atomically.

A timer is a member `<lead>|<ekey>|<token>` (side steps: token `s<n>`, inactivity: ekey `~inactive`)
scored by its due time in epoch milliseconds. Claiming runs one Lua script per shard that moves due
members into the shard's in-flight set (`nurture:timers-inflight:{t<N>}`, same hash tag, so the
script touches one slot) with a lease; the caller removes them after its SQL commit (`ack`). A process
killed mid-step leaves them in flight: the lease expires (or `recover` at start-up moves them back)
and they fire again; the token check against the committed enrolment makes a replay harmless.
Members carry everything needed, so a pending step costs one sorted-set entry (measured by
bench/simulate.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from nurture.redisconn import AsyncRedis, execute_replicated, shard_of
from nurture.telemetry import redis_span

LEASE_S = 30.0

_CLAIM = """
local out = {}
local limit = tonumber(ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, limit)
for _, m in ipairs(expired) do
  redis.call('ZADD', KEYS[2], ARGV[4], m)
  table.insert(out, m)
end
if #out < limit then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, limit - #out)
  for _, m in ipairs(due) do
    redis.call('ZREM', KEYS[1], m)
    redis.call('ZADD', KEYS[2], ARGV[4], m)
    table.insert(out, m)
  end
end
return out
"""

_RECOVER = """
local moved = redis.call('ZRANGE', KEYS[2], 0, -1)
for _, m in ipairs(moved) do
  redis.call('ZADD', KEYS[1], 0, m)
end
redis.call('DEL', KEYS[2])
return #moved
"""


def timer_key(shard: int) -> str:
    return f"nurture:timers:{{t{shard}}}"


def inflight_key(shard: int) -> str:
    return f"nurture:timers-inflight:{{t{shard}}}"


def to_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


@dataclass(frozen=True)
class Timer:
    lead_id: str
    ekey: str
    token: str
    shard: int
    member: bytes

    @property
    def side(self) -> bool:
        return self.token.startswith("s")


def member(lead_id: str, ekey: str, token: int | str) -> str:
    return f"{lead_id}|{ekey}|{token}"


def parse(raw: bytes, shard: int) -> Timer | None:
    parts = raw.decode().rsplit("|", 2)
    if len(parts) != 3:
        return None
    return Timer(parts[0], parts[1], parts[2], shard, raw)


class Arm(NamedTuple):
    """A timer to (re)arm: the enrolment (or lead-level timer) `ekey` of a lead, the token it must
    still hold when it fires (`"s"` for its side steps), and when."""

    lead_id: str
    ekey: str
    token: int | str
    due: datetime


class TimerStore:
    def __init__(self, client: AsyncRedis, shards: int, wait_replicas: int = 0) -> None:
        self._redis = client
        self.shards = shards
        # NURTURE_REDIS_WAIT_REPLICAS: `schedule` returns once that many replicas hold the arms, else raises
        # NotReplicated (the runtime then re-arms those leads from SQL: a failover may have lost them).
        self._wait_replicas = wait_replicas
        self._claim = client.register_script(_CLAIM)
        self._recover = client.register_script(_RECOVER)

    def shard(self, lead_id: str) -> int:
        return shard_of(lead_id, self.shards)

    async def schedule(self, items: list[Arm]) -> None:
        """Arm timers: (lead, ekey, token, due). Re-arming the same member only moves its score."""
        if not items:
            return
        with redis_span("redis timers.schedule"):
            pipe = self._redis.pipeline(transaction=False)
            for lead_id, ekey, token, due in items:
                pipe.zadd(timer_key(self.shard(lead_id)), {member(lead_id, ekey, token): to_ms(due)})
            await execute_replicated(self._redis, pipe, {timer_key(self.shard(item[0])) for item in items},
                                     self._wait_replicas)

    async def cancel(self, items: list[tuple[str, str, int | str]]) -> None:
        if not items:
            return
        pipe = self._redis.pipeline(transaction=False)
        for lead_id, ekey, token in items:
            pipe.zrem(timer_key(self.shard(lead_id)), member(lead_id, ekey, token))
        await pipe.execute()

    async def claim(self, now: datetime, limit: int = 500, shards: Iterable[int] | None = None) -> list[Timer]:
        """Atomically take up to `limit` due timers per shard (plus expired leases), of every shard or of
        `shards` (those of the partitions this replica owns)."""
        wall = time.time()
        out: list[Timer] = []
        with redis_span("redis timers.claim"):
            for shard in (range(self.shards) if shards is None else sorted(shards)):
                members = await self._claim(
                    keys=[timer_key(shard), inflight_key(shard)],
                    args=[to_ms(now), limit, int(wall * 1000), int((wall + LEASE_S) * 1000)])
                for raw in members or []:
                    timer = parse(raw, shard)
                    if timer is not None:
                        out.append(timer)
        return out

    async def ack(self, timers: list[Timer]) -> None:
        if not timers:
            return
        pipe = self._redis.pipeline(transaction=False)
        for t in timers:
            pipe.zrem(inflight_key(t.shard), t.member)
        await pipe.execute()

    async def release(self, timers: list[Timer]) -> None:
        """Claimed timers whose work was refused go back to be claimed again now (into the due set first:
        a crash between the two leaves a timer in both, which fires twice and the token check drops)."""
        if not timers:
            return
        pipe = self._redis.pipeline(transaction=False)
        for t in timers:
            pipe.zadd(timer_key(t.shard), {t.member: 0})
        for t in timers:
            pipe.zrem(inflight_key(t.shard), t.member)
        await pipe.execute()

    async def recover(self, shards: Iterable[int] | None = None) -> int:
        """Everything a previous process left in flight (in every shard, or in `shards`: a partition's, when
        this replica has just taken it over) fires again now."""
        moved = 0
        for shard in (range(self.shards) if shards is None else sorted(shards)):
            moved += int(await self._recover(keys=[timer_key(shard), inflight_key(shard)]))
        return moved

    async def next_due(self) -> datetime | None:
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(self.shards):
            pipe.zrange(timer_key(shard), 0, 0, withscores=True)
        results = await pipe.execute()
        scores = [r[0][1] for r in results if r]
        if not scores:
            return None
        return datetime.fromtimestamp(min(scores) / 1000, tz=UTC)

    async def pending(self) -> int:
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(self.shards):
            pipe.zcard(timer_key(shard))
        return int(sum(await pipe.execute()))

    async def due_count(self, now: datetime) -> int:
        """Timers due at `now` and not yet claimed (late, if it stays above zero)."""
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(self.shards):
            pipe.zcount(timer_key(shard), "-inf", to_ms(now))
        return int(sum(await pipe.execute()))
