"""Rate limits of the tracking endpoints, in Redis so that every gateway process counts together: per
site key (requests per second) and per visitor (events per minute). Fixed windows: one INCR per key
and window, expiring with it, in one round trip for both counts."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from gateway.tracking.keys import SiteKey
from nurture.redisconn import AsyncRedis


@dataclass(frozen=True)
class Refusal:
    scope: str          # key | visitor
    limit: int
    retry_after_s: int


def _tag(text: str) -> str:
    # Site keys are public, visitor ids guessable by nobody but still personal: neither goes into Redis as is.
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class RateLimits:
    def __init__(self, redis: AsyncRedis) -> None:
        self._redis = redis

    async def take(self, key: SiteKey, visitor_id: str | None, events: int = 1) -> Refusal | None:
        """Count one request for the key and `events` for the visitor; the refusal when over either.
        Wall-clock time on purpose: this protects the service, it is not domain time."""
        now = time.time()
        second, minute = int(now), int(now // 60)
        pipe = self._redis.pipeline(transaction=False)
        key_counter = f"nurture:t:rl:k:{_tag(key.key)}:{second}"
        pipe.incr(key_counter)
        pipe.expire(key_counter, 2)
        if visitor_id:
            visitor_counter = f"nurture:t:rl:v:{_tag(visitor_id)}:{minute}"
            pipe.incrby(visitor_counter, max(1, events))
            pipe.expire(visitor_counter, 61)
        counts = await pipe.execute()
        if int(counts[0]) > key.rate_per_s:
            return Refusal("key", key.rate_per_s, 1)
        if visitor_id and int(counts[2]) > key.visitor_per_min:
            return Refusal("visitor", key.visitor_per_min, max(1, math.ceil(60 - now % 60)))
        return None

    async def close(self) -> None:
        await self._redis.aclose()
