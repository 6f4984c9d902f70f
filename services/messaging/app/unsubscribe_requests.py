"""Messaging's reader of the unsubscribes the gateway queued while messaging was away
(`nurture.unsubscribequeue`): each applied as the Unsubscribe RPC applies it, then removed.

An entry leaves the stream only after its unsubscribe was recorded (the record is idempotent by message
and scope, so one applied twice after a crash records once); a token that does not verify is dropped
with a warning (nobody signed it); any other failure leaves the entry pending, tried again on the next
pass. Entries another replica read and left (it died) are claimed after `claim_idle_ms`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import cast

from redis.exceptions import ResponseError

from nurture import unsubscribequeue
from nurture.redisconn import AsyncRedis, ensure_group
from services.messaging.domain.tokens import TokenError

log = logging.getLogger(__name__)

Apply = Callable[[str, str, str], Awaitable[object]]  # (token, scope, source)
_Entry = tuple[bytes, dict[bytes, bytes] | None]


class UnsubscribeRequests:
    def __init__(self, redis: AsyncRedis, apply: Apply, *, batch: int = 100, claim_idle_ms: int = 30_000,
                 consumer: str | None = None) -> None:
        self._redis = redis
        self._apply = apply
        self._batch = batch
        self._claim_idle_ms = claim_idle_ms
        self._consumer = consumer or f"messaging-{socket.gethostname()}-{os.environ.get('NURTURE_REPLICA', '0')}"
        self._lock = asyncio.Lock()
        self._ready = False

    async def _ensure_group(self) -> None:
        if self._ready:
            return
        await ensure_group(self._redis, unsubscribequeue.STREAM, unsubscribequeue.GROUP)
        self._ready = True

    async def _read(self, start: str) -> list[_Entry]:
        try:
            got = await self._redis.xreadgroup(unsubscribequeue.GROUP, self._consumer,
                                               {unsubscribequeue.STREAM: start}, count=self._batch)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._ready = False  # Redis lost the group: make it again
            await self._ensure_group()
            return []
        found = cast(list[tuple[bytes, list[_Entry]]] | None, got) or []
        return [item for _, items in found for item in items]

    async def drain(self) -> int:
        """Apply every queued unsubscribe now (this consumer's pending ones, those other consumers left
        idle, then the new ones); returns how many were applied. Stops at the first that fails for a
        reason other than its token (messaging's store or scoring away): it stays pending."""
        await self._ensure_group()
        applied = 0
        async with self._lock:
            await self._redis.xautoclaim(unsubscribequeue.STREAM, unsubscribequeue.GROUP, self._consumer,
                                         self._claim_idle_ms, start_id="0-0", count=self._batch)
            for start in ("0", ">"):
                while items := await self._read(start):
                    for entry_id, fields in items:
                        if fields:
                            try:
                                await self._apply((fields.get(b"k") or b"").decode(errors="replace"),
                                                  (fields.get(b"s") or b"").decode(errors="replace"),
                                                  (fields.get(b"o") or b"page").decode(errors="replace"))
                            except TokenError as exc:
                                log.warning("unsubscribe request %s dropped: %s", entry_id, exc)
                            applied += 1
                        await self._done(entry_id)
                    if start == "0":
                        break  # the pending ones were read once; what failed stopped the pass above
        return applied

    async def _done(self, entry_id: bytes) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.xack(unsubscribequeue.STREAM, unsubscribequeue.GROUP, entry_id)
        pipe.xdel(unsubscribequeue.STREAM, entry_id)
        await pipe.execute()

    async def run(self, every_s: float = 1.0) -> None:
        me = asyncio.current_task()
        while True:
            if me is not None and me.cancelling():
                # redis-py can swallow a cancellation that lands inside a command (see nurture.bus): the
                # task still records it, and the loop ends here instead of running on after a stop.
                raise asyncio.CancelledError
            try:
                await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("unsubscribe requests: a pass failed; trying again", exc_info=True)
            await asyncio.sleep(every_s)
