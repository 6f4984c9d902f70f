"""Per-key locks: one lead, contact or CRM object handled by one task at a time (KeyLocks, in one
process), or by one task of all a service's replicas (SharedKeyLocks, with a lease in Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from nurture.redisconn import AsyncRedis, run_script

log = logging.getLogger(__name__)
T = TypeVar("T")

# A Redis that cannot answer now: a lease not taken is LockBusy (the caller answers "try again"), one not
# given back runs out by itself (the work under it is done: it does not fail for that).
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError)


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
    lock): the lease orders the ordinary case, the row stops a late writer.

    `hold` is one key for one caller; `hold_each` is a batch's leases, many callers' keys in one round
    trip to take and one to give back (a batcher's handler holds them while it works)."""

    def __init__(self, redis: AsyncRedis | None, prefix: str, *, lease_ms: int = 15_000,
                 wait_s: float = 10.0) -> None:
        self._local = KeyLocks()
        self._redis = redis
        self._prefix = prefix
        self._lease_ms = lease_ms
        self._wait_s = wait_s
        self._release_one = redis.register_script(RELEASE_IF_HELD) if redis is not None else None

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        async with self._local.hold(key):
            if self._redis is None or self._release_one is None:
                yield
                return
            # One key: plain commands (a pipeline of one costs more CPU than the command alone).
            name, token = f"{self._prefix}:{{{key}}}", secrets.token_hex(8)
            async with self.waiting(key) as wait:
                while not await self._taken(self._redis.set(name, token, nx=True, px=self._lease_ms)):
                    await wait()
            try:
                yield
            finally:
                try:
                    await self._release_one(keys=[name], args=[token])
                except _UNREACHABLE:
                    log.warning("lease %s not given back (Redis unreachable): it runs out by itself", name)

    @contextlib.asynccontextmanager
    async def waiting(self, what: str) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        """The wait between tries of a busy key (`what`: the key or the work, for LockBusy's text): short
        pauses, growing, then LockBusy once `wait_s` has passed."""
        deadline, pause = time.monotonic() + self._wait_s, 0.005

        async def wait() -> None:
            nonlocal pause
            if time.monotonic() >= deadline:
                raise LockBusy(f"{what} is being handled by another replica; try again")
            # Jittered: two replicas that each took part of the other's keys and gave them back do not
            # meet again in step.
            await asyncio.sleep(pause * (0.5 + secrets.randbelow(1000) / 1000))
            pause = min(pause * 2, 0.1)

        yield wait

    @contextlib.asynccontextmanager
    async def hold_each(self, groups: Sequence[Sequence[str]]) -> AsyncIterator[list[bool]]:
        """Leases for each group of keys (a batch item's keys), taken in one pipelined round trip: one
        SET NX PX per key, each key its own slot (a Redis Cluster sends each to its node; no script
        spans two keys). Yields, per group, whether all its keys are held. A group that missed a key
        gives back what it got at once (it holds nothing while it waits: no hold-and-wait, so no
        deadlock); the caller tries it again later. The held ones are given back in one round trip.

        The in-process locks are not taken here: the caller holds them (e.g. KeyLocks per item before it
        joins a batch, so no two groups of one batch share a key)."""
        if self._redis is None or not groups:
            yield [True] * len(groups)
            return
        # A token per group: were a key in two groups, the second's miss gives back nothing of the first's.
        tokens = [secrets.token_hex(8) for _ in groups]
        names = [sorted({f"{self._prefix}:{{{key}}}" for key in keys}) for keys in groups]
        pipe = self._redis.pipeline(transaction=False)
        for group, token in zip(names, tokens, strict=True):
            for name in group:
                # As SET's own arguments: redis-py's `set` spends more on its options than on sending it.
                pipe.execute_command("SET", name, token, "NX", "PX", self._lease_ms)
        answers = iter(await self._taken(pipe.execute()))
        got = [[name for name in group if next(answers)] for group in names]
        held = [len(g) == len(group) for g, group in zip(got, names, strict=True)]

        def leases(kept: bool) -> list[tuple[str, str]]:
            return [(name, token) for g, ok, token in zip(got, held, tokens, strict=True) if ok == kept for name in g]

        try:
            await self._release(leases(False))
            yield held
        finally:
            await self._release(leases(True))

    @staticmethod
    async def _taken(attempt: Awaitable[T]) -> T:
        """The answer of an attempt to take leases; Redis unreachable is LockBusy (try again), not a failure."""
        try:
            return await attempt
        except _UNREACHABLE as exc:
            raise LockBusy(f"leases cannot be taken now ({type(exc).__name__}); try again") from exc

    async def _release(self, leases: list[tuple[str, str]]) -> None:
        """Give back (name, token) leases still ours (an expired one may be another holder's now), in one
        round trip."""
        if leases and self._redis is not None:
            try:
                await run_script(self._redis, RELEASE_IF_HELD, [([name], [token]) for name, token in leases])
            except _UNREACHABLE:
                log.warning("%d leases not given back (Redis unreachable): they run out by themselves", len(leases))
