"""Per-key locks: one lead, contact or CRM object handled by one task at a time (KeyLocks, in one
process), or by one task of all a service's replicas (SharedKeyLocks, with a lease in Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

from nurture.redisconn import AsyncRedis


class KeyLocks:
    """One asyncio lock per key while anyone holds or waits for it (so idle keys cost nothing): e.g.
    duplicate deliveries of one contact, or two batches touching one lead, run one at a time."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class LockBusy(RuntimeError):
    """Another replica held the key past the wait (the caller answers UNAVAILABLE: try again)."""


# Deletes a lease only while it is still the caller's (an expired one may be another holder's now): KEYS[1]
# the lease, ARGV[1] the holder's value. Also nurture.partitions' release of a partition's lease.
RELEASE_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class SharedKeyLocks:
    """KeyLocks across a service's replicas: a key's in-process lock, then its lease in Redis
    (`<prefix>:{<key>}`, SET NX PX: one key, so one slot on a Redis Cluster), for work on one external
    object that several replicas may be handed at once (a CRM delivers webhooks concurrently, to any
    replica). Without Redis (`redis` None) it is the in-process lock alone.

    A lease, not a lock held forever: a holder that crashes frees the key after `lease_ms`. A holder that
    pauses past its lease and wakes up may overlap the next holder, so the work under it must still
    judge its last write against what is stored (as crm_sync's inbound objects do under their row's
    lock): the lease orders the ordinary case, the row stops a late writer."""

    def __init__(self, redis: AsyncRedis | None, prefix: str, *, lease_ms: int = 15_000,
                 wait_s: float = 10.0) -> None:
        self._local = KeyLocks()
        self._redis = redis
        self._prefix = prefix
        self._lease_ms = lease_ms
        self._wait_s = wait_s
        self._release = redis.register_script(RELEASE_IF_HELD) if redis is not None else None

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        async with self._local.hold(key):
            if self._redis is None or self._release is None:
                yield
                return
            name, token = f"{self._prefix}:{{{key}}}", secrets.token_hex(8)
            deadline, pause = time.monotonic() + self._wait_s, 0.005
            while not await self._redis.set(name, token, nx=True, px=self._lease_ms):
                if time.monotonic() >= deadline:
                    raise LockBusy(f"{key} is being handled by another replica; try again")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.1)
            try:
                yield
            finally:
                await self._release(keys=[name], args=[token])
