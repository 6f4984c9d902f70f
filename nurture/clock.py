"""The one clock every service reads.

`RealClock` is wall time. `VirtualClock` keeps "now" in Redis so that every process of the mesh sees the
same instant, and time moves only when the admin API advances it: 60 days of journeys run in seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

from nurture import redisconn
from nurture.settings import Settings

CLOCK_KEY = "nurture:clock"
# A fixed, readable origin so that virtual runs are reproducible.
VIRTUAL_EPOCH = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, UTC, tz-aware."""
        ...


class RealClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class VirtualClock:
    """Time stored in Redis as integer microseconds since the Unix epoch."""

    def __init__(self, client: redisconn.SyncRedis, start: datetime = VIRTUAL_EPOCH) -> None:
        self._redis = client
        # SETNX: the first process to start decides the origin; later ones join it.
        self._redis.set(CLOCK_KEY, _to_micros(start), nx=True)

    def now(self) -> datetime:
        raw = self._redis.get(CLOCK_KEY)
        if raw is None:
            return VIRTUAL_EPOCH
        return _from_micros(int(raw))

    def set(self, when: datetime) -> datetime:
        """Move time to `when`; time never goes backwards."""
        target = max(_to_micros(when), _to_micros(self.now()))
        self._redis.set(CLOCK_KEY, target)
        return _from_micros(target)

    def advance(self, seconds: float) -> datetime:
        return self.set(self.now() + timedelta(seconds=seconds))


class FixedClock:
    """An in-process clock for unit tests and simulations: moves only when told."""

    def __init__(self, start: datetime = VIRTUAL_EPOCH) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> datetime:
        self._now = max(self._now, when)
        return self._now

    def advance(self, seconds: float) -> datetime:
        return self.set(self._now + timedelta(seconds=seconds))


def _to_micros(when: datetime) -> int:
    if when.tzinfo is None:
        raise ValueError("naive datetime: every time in the mesh carries a zone")
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)


def make_clock(settings: Settings) -> Clock:
    """The clock named by settings: `real`, or `virtual` shared through the mesh's Redis (or Cluster)."""
    if settings.clock == "virtual":
        return VirtualClock(redisconn.connect_sync(settings))
    return RealClock()
