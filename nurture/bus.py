"""The event bus: Redis Streams, sharded by lead, read by consumer groups.

Scoring publishes one message per stored event (and per lead change) to `nurture:bus:{s<N>}` with
N = crc32(lead_id) % shards, so one lead's messages keep their order. Each consuming service reads with
its own consumer group and acknowledges only after its own commit; what it had read but not
acknowledged before a crash is read again on restart (handlers are idempotent by message id).
A message whose handler keeps failing is moved to `nurture:bus-dead:{<group>}` after MAX_DELIVERIES,
so one bad message never blocks a shard.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from nurture.redisconn import shard_of, sharded_key

log = logging.getLogger(__name__)

Handler = Callable[[list[dict[str, Any]]], Awaitable[None]]
MAX_DELIVERIES = 5
# Approximate cap per shard stream; far above any consumer lag we expect, and trimming is lazy.
STREAM_MAXLEN = 1_000_000


def stream_key(shard: int) -> str:
    return sharded_key("bus", shard)


class Publisher:
    def __init__(self, client: aioredis.Redis, shards: int) -> None:
        self._redis = client
        self._shards = shards

    async def publish(self, messages: list[dict[str, Any]]) -> None:
        """Append messages (each with `id` and `lead_id`) to their lead's shard, in order."""
        await self.publish_encoded([(str(m["lead_id"]), encode(m), None) for m in messages])

    async def publish_encoded(self, entries: Sequence[tuple[str, str, str | None]]) -> None:
        """Append already encoded messages `(lead_id, message JSON, trace carrier JSON or None)`, in
        order. The trace rides beside the message (field `t`), as a header would."""
        if not entries:
            return
        pipe = self._redis.pipeline(transaction=False)
        for lead_id, payload, carrier in entries:
            fields = {"m": payload, "t": carrier} if carrier else {"m": payload}
            pipe.xadd(stream_key(shard_of(lead_id, self._shards)), fields,  # type: ignore[arg-type]
                      maxlen=STREAM_MAXLEN, approximate=True)
        await pipe.execute()


def encode(message: Mapping[str, Any]) -> str:
    """A bus message's JSON (compact; datetimes and other values as strings)."""
    return json.dumps(message, separators=(",", ":"), default=str)


class Consumer:
    """Reads every shard for one consumer group and hands batches to an idempotent handler."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        group: str,
        shards: int,
        handler: Handler,
        batch: int = 500,
        consumer: str | None = None,
    ) -> None:
        self._redis = client
        self._group = group
        self._shards = shards
        self._handler = handler
        self._batch = batch
        # Stable per host and process slot so a restarted process re-reads its own pending entries.
        self._consumer = consumer or f"{group}-{socket.gethostname()}-{os.environ.get('NURTURE_REPLICA', '0')}"
        self._lock = asyncio.Lock()
        self._failures: dict[bytes, int] = {}
        self._ready = False

    async def ensure_groups(self) -> None:
        if self._ready:
            return
        for shard in range(self._shards):
            try:
                await self._redis.xgroup_create(stream_key(shard), self._group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._ready = True

    async def _read(self, start: str, block: int | None) -> list[tuple[bytes, list[tuple[bytes, dict]]]]:
        streams: dict[Any, Any] = {stream_key(s): start for s in range(self._shards)}
        result: Any = await self._redis.xreadgroup(
            self._group, self._consumer, streams, count=self._batch, block=block
        )
        return list(result or [])

    async def _handle(self, entries: list[tuple[bytes, list[tuple[bytes, dict]]]]) -> int:
        handled = 0
        for stream, items in entries:
            if not items:
                continue
            messages: list[dict[str, Any]] = []
            ids: list[bytes] = []
            for entry_id, fields in items:
                ids.append(entry_id)
                try:
                    messages.append(json.loads(fields[b"m"]))
                except (KeyError, ValueError):
                    log.error("bus %s: dropping malformed entry %r", self._group, entry_id)
            try:
                if messages:
                    await self._handler(messages)
            except Exception:
                log.exception("bus %s: handler failed on %d messages", self._group, len(messages))
                await self._record_failure(stream, ids, messages)
                continue
            await self._redis.xack(stream, self._group, *ids)
            for entry_id in ids:
                self._failures.pop(entry_id, None)
            handled += len(ids)
        return handled

    async def _record_failure(self, stream: bytes, ids: list[bytes], messages: list[dict[str, Any]]) -> None:
        for entry_id in ids:
            self._failures[entry_id] = self._failures.get(entry_id, 0) + 1
        dead = [i for i in ids if self._failures[i] >= MAX_DELIVERIES]
        if dead:
            for entry_id in dead:
                await self._redis.xadd(
                    f"nurture:bus-dead:{{{self._group}}}",
                    {"stream": stream, "entry": entry_id, "m": json.dumps(messages, default=str)[:65536]},
                )
                self._failures.pop(entry_id, None)
            await self._redis.xack(stream, self._group, *dead)
            log.error("bus %s: dead-lettered %d entries after %d failures", self._group, len(dead), MAX_DELIVERIES)

    async def drain(self) -> int:
        """Handle everything pending for this group right now (own unacked entries first)."""
        await self.ensure_groups()
        total = 0
        async with self._lock:
            for start in ("0", ">"):
                while True:
                    entries = await self._read(start, None)
                    if not any(items for _, items in entries):
                        break
                    done = await self._handle(entries)
                    total += done
                    if done == 0:
                        break
        return total

    async def run(self, idle_block_ms: int = 200) -> None:
        """Consume forever. Entries read before a crash are handled first."""
        await self.ensure_groups()
        await self.drain()
        while True:
            try:
                # Block outside the lock so Settle's drain is never starved by an idle read.
                entries = await self._read(">", idle_block_ms)
                if entries:
                    async with self._lock:
                        await self._handle(entries)
                else:
                    async with self._lock:
                        pending = await self._read("0", None)
                        if any(items for _, items in pending):
                            await self._handle(pending)
                            await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bus %s: consumer loop error; retrying", self._group)
                await asyncio.sleep(1.0)
