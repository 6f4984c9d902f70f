"""Rate limits of the tracking endpoints, in Redis so that every gateway process counts together: per
site key (requests per second) and per visitor (events per minute). Fixed windows: one counter per key
and window, expiring with it.

The counts of concurrent requests go to Redis together (`nurture.batching.Batcher`): one script call
per site key counts a whole batch's requests in their order, so each still gets its own exact count,
where a pipeline per request cost a third of the gateway's CPU per collected event. A site key's
counters share a hash tag, so on Redis Cluster a batch's script touches one slot. The collect path
counts its batches itself (`count`, from `gateway.tracking.collector`), in the same batch as its call
to scoring."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from gateway.tracking.keys import SiteKey
from nurture.batching import Batcher
from nurture.redisconn import AsyncRedis, run_script

# KEYS: the counters in the order counted; ARGV: for each, its increment then its lifetime in seconds.
# A counter gets its lifetime when this call makes it (in the same atomic script, so none is left
# without one); the counts come back in KEYS order.
_TAKE_LUA = """
local counts = {}
for i, key in ipairs(KEYS) do
  local by = tonumber(ARGV[2 * i - 1])
  local n = redis.call('INCRBY', key, by)
  if n == by then redis.call('EXPIRE', key, ARGV[2 * i]) end
  counts[i] = n
end
return counts
"""


@dataclass(frozen=True)
class Refusal:
    scope: str          # key | visitor
    limit: int
    retry_after_s: int


@dataclass(frozen=True)
class Take:
    """One request to count."""

    key: SiteKey
    visitor_id: str | None
    events: int
    now: float

    @classmethod
    def now_for(cls, key: SiteKey, visitor_id: str | None, events: int) -> Take:
        # Wall-clock time on purpose: this protects the service, it is not domain time.
        return cls(key, visitor_id, events, time.time())


def _tag(text: str) -> str:
    # Site keys are public, visitor ids guessable by nobody but still personal: neither goes into Redis as is.
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class RateLimits:
    def __init__(self, redis: AsyncRedis, max_batch: int = 500) -> None:
        self._redis = redis
        self._tags: dict[str, str] = {}
        self._batcher: Batcher[Take, Refusal | None] = Batcher(self.count, max_batch=max_batch, parallel=1)

    async def take(self, key: SiteKey, visitor_id: str | None, events: int = 1) -> Refusal | None:
        """Count one request for the key and `events` for the visitor; the refusal when over either."""
        return await self._batcher.submit(Take.now_for(key, visitor_id, events))

    def _key_tag(self, key: str) -> str:
        tag = self._tags.get(key)
        if tag is None:
            tag = self._tags[key] = _tag(key)
        return tag

    async def count(self, takes: list[Take]) -> list[Refusal | None | BaseException]:
        """Count these requests, in their order, in one round trip (a Redis error fails them all)."""
        by_key: dict[str, list[int]] = {}
        for i, t in enumerate(takes):
            by_key.setdefault(t.key.key, []).append(i)
        calls: list[tuple[list[str], list[int]]] = []
        for key, indexes in by_key.items():
            counters: list[str] = []
            args: list[int] = []
            prefix = f"nurture:t:rl:{{{self._key_tag(key)}}}"
            for i in indexes:
                t = takes[i]
                counters.append(f"{prefix}:k:{int(t.now)}")
                args += [1, 2]
                if t.visitor_id:
                    counters.append(f"{prefix}:v:{_tag(t.visitor_id)}:{int(t.now // 60)}")
                    args += [max(1, t.events), 61]
            calls.append((counters, args))
        replies = await run_script(self._redis, _TAKE_LUA, calls)  # one round trip (per node on a cluster)
        out: list[Refusal | None | BaseException] = [None] * len(takes)
        for indexes, counts in zip(by_key.values(), replies, strict=True):
            position = iter(counts)
            for i in indexes:
                out[i] = _verdict(takes[i], int(next(position)),
                                  int(next(position)) if takes[i].visitor_id else None)
        return out

    async def close(self) -> None:
        await self._redis.aclose()


def _verdict(take: Take, key_count: int, visitor_count: int | None) -> Refusal | None:
    if key_count > take.key.rate_per_s:
        return Refusal("key", take.key.rate_per_s, 1)
    if visitor_count is not None and visitor_count > take.key.visitor_per_min:
        return Refusal("visitor", take.key.visitor_per_min, max(1, math.ceil(60 - take.now % 60)))
    return None
