"""Scoring's reader of the website collect stream (`nurture.collectstream`): the gateway answers a collect
request once its entry is in Redis; this stores the entries in large batches, each batch one
`VisitorDoor.collect` (one transaction for its anonymous visitors, the ingest for identified ones).

Never loses an answered event, never stores one twice:
- An entry leaves the stream (XACK and XDEL in one script) only after its batch committed; a process
  killed mid-batch reads its own pending entries again on restart (a stable consumer name per host and
  replica slot), and entries another consumer left pending for `claim_idle_ms` are claimed (XAUTOCLAIM).
  A redelivered event is dropped by the unique (visitor, client id) check of the collect transaction
  (and, for an identified visitor, by the ingest's idempotency key).
- A batch that fails is tried entry by entry: when some entries store alone and one does not, that one
  is the problem and goes to the shard's dead-letter stream (kept for a person: listed and retried
  through scoring's Admin service, `CollectDeadLetters`, as the console's operations page does); when
  none stores, the database is the problem and every entry stays pending, tried again a second later.

Reads see what was answered before them (`stored_up_to_now`): an entry still in the stream is one not
yet stored, so the barrier notes each shard's last entry and waits until nothing up to it is left.
Identification (and a form that identifies) waits for it before merging, so the merge takes every event
the visitor was answered for, exactly once and in order; the visitor's profile read for personalization
waits for it briefly (and otherwise answers with what is stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import cast

from opentelemetry import trace
from redis.exceptions import RedisError, ResponseError
from redis.typing import KeyT, StreamIdT

from nurture import collectstream
from nurture.admin import DeadLetter, Retried
from nurture.redisconn import AsyncRedis, ensure_group, is_cluster, run_script
from nurture.telemetry import batch_parent, traceparent_contexts, tracer
from services.scoring.app.visitors import VisitorEventIn

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

# One stream entry as redis-py reads it: its id and its fields (None: deleted while pending).
_Entry = tuple[bytes, dict[bytes, bytes] | None]
Visits = list[tuple[str, list[VisitorEventIn]]]
Store = Callable[[Visits], Awaitable[object]]

# Stored: the entries leave the consumer group's pending list and the stream together (one slot).
_DONE_LUA = """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
return #ARGV - 1
"""


def _visits(items: list[_Entry]) -> tuple[Visits, list[str]]:
    visits: Visits = []
    traces: list[str] = []
    for entry_id, fields in items:
        if fields is None:  # deleted after its commit, before its acknowledgement reached Redis
            continue
        try:
            events = collectstream.decode_events(fields.get(b"e", b""))
            visitor = fields[b"v"].decode()
        except (KeyError, UnicodeDecodeError, collectstream.MalformedEntry) as exc:
            log.error("collect stream: dropping malformed entry %r: %s", entry_id, exc)
            continue
        tp = (fields.get(b"t") or b"").decode(errors="replace") or None
        visits.append((visitor, [VisitorEventIn(type=e.type, properties=e.properties, occurred_at=e.occurred_at,
                                                client_id=e.client_id, trace=tp) for e in events]))
        if tp:
            traces.append(tp)
    return visits, traces


class CollectStream:
    def __init__(self, client: AsyncRedis, shards: int, store: Store, *, batch: int = 500, linger: float = 0.05,
                 claim_idle_ms: int = 30_000, consumer: str | None = None) -> None:
        self._redis = client
        self._keys = [collectstream.stream_key(s) for s in range(shards)]
        self._store = store
        self._batch = batch
        self._linger = linger  # seconds to wait after a small read, for a larger batch
        self._claim_idle_ms = claim_idle_ms
        self._consumer = consumer or f"scoring-{socket.gethostname()}-{os.environ.get('NURTURE_REPLICA', '0')}"
        self._lock = asyncio.Lock()   # one batch at a time in this process (the loop, or a drain)
        self._stored = asyncio.Event()  # set after each stored batch: wakes the barrier's waiters
        self._ready = False
        self._claimed_at = 0.0

    async def ensure_groups(self) -> None:
        if self._ready:
            return
        for key in self._keys:
            await ensure_group(self._redis, key, collectstream.GROUP)
        self._ready = True

    # -- reading ----------------------------------------------------------------------------------------

    async def _xreadgroup(self, streams: dict[KeyT, StreamIdT], block: int | None) -> list[tuple[bytes, list[_Entry]]]:
        try:
            result = await self._redis.xreadgroup(collectstream.GROUP, self._consumer, streams, count=self._batch,
                                                  block=block)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost the group (restarted without its data): make it again from what is left.
            log.warning("collect stream: consumer group missing (%s); creating it again", exc)
            self._ready = False
            await self.ensure_groups()
            return []
        return list(cast(list[tuple[bytes, list[_Entry]]] | None, result) or [])

    async def _read(self, start: str, block: int | None) -> list[tuple[bytes, list[_Entry]]]:
        if not is_cluster(self._redis):
            return await self._xreadgroup({k: start for k in self._keys}, block)
        # A cluster runs a multi-key command only within one slot, and each shard has its own: read each.
        found = await asyncio.gather(*(self._xreadgroup({k: start}, None) for k in self._keys))
        out = [item for items in found for item in items]
        if not any(items for _, items in out) and block:
            await asyncio.sleep(block / 1000)
        return out

    async def _claim(self) -> None:
        """Take over what other consumers (a scoring process gone for good) left pending too long."""
        self._claimed_at = time.monotonic()
        for key in self._keys:
            start: StreamIdT = "0-0"
            while True:
                # Not justid: redis-py then drops the cursor this loop needs (nurture.bus does the same).
                answer = await self._redis.xautoclaim(key, collectstream.GROUP, self._consumer, self._claim_idle_ms,
                                                      start_id=start, count=self._batch)
                start = cast(bytes, answer[0])
                if start in (b"0-0", "0-0"):
                    break

    # -- storing ----------------------------------------------------------------------------------------

    async def _done(self, stream: bytes, ids: list[bytes]) -> None:
        if ids:
            await run_script(self._redis, _DONE_LUA, [([stream], [collectstream.GROUP, *ids])])

    async def _store_batch(self, items: list[_Entry]) -> None:
        visits, traces = _visits(items)
        if not visits:
            return
        parent, links = batch_parent(traceparent_contexts(traces))
        with _tracer.start_as_current_span("collect stream store", context=parent, links=links,
                                           kind=trace.SpanKind.CONSUMER,
                                           attributes={"messaging.system": "redis", "visits": len(visits)}):
            await self._store(visits)

    async def _handle(self, entries: list[tuple[bytes, list[_Entry]]]) -> int:
        """Store what was read (every shard's entries in one call) and acknowledge it; 0 when nothing
        could be stored (the entries stay pending)."""
        entries = [(stream, items) for stream, items in entries if items]
        if not entries:
            return 0
        try:
            await self._store_batch([item for _, items in entries for item in items])
        except Exception:
            log.warning("collect stream: a batch of %d entries failed; storing entry by entry",
                        sum(len(items) for _, items in entries), exc_info=True)
            return await self._one_by_one(entries)
        for stream, items in entries:
            await self._done(stream, [entry_id for entry_id, _ in items])
        self._stored.set()
        self._stored = asyncio.Event()
        return sum(len(items) for _, items in entries)

    async def _one_by_one(self, entries: list[tuple[bytes, list[_Entry]]]) -> int:
        stored = 0
        failed: list[tuple[bytes, _Entry, str]] = []
        for stream, items in entries:
            for item in items:
                try:
                    await self._store_batch([item])
                except Exception as exc:
                    failed.append((stream, item, f"{type(exc).__name__}: {exc}"[:2000]))
                    continue
                await self._done(stream, [item[0]])
                stored += 1
        if stored and failed:
            # Others stored, these did not: it is these entries, not the database. Kept for a person.
            for stream, (entry_id, fields), error in failed:
                shard = self._keys.index(stream.decode())
                await self._redis.xadd(collectstream.dead_key(shard), {  # type: ignore[arg-type]
                    "entry": entry_id, **{k.decode(): v for k, v in (fields or {}).items()}, "error": error})
                await self._done(stream, [entry_id])
            log.error("collect stream: %d entries could not be stored and were dead-lettered", len(failed))
        if stored:
            self._stored.set()
            self._stored = asyncio.Event()
        return stored

    # -- running ----------------------------------------------------------------------------------------

    async def drain(self) -> int:
        """Store everything in the stream now: this consumer's pending entries, then the new ones (what
        the loop does, at once; Settle calls it). Entries that cannot be stored stay pending."""
        await self.ensure_groups()
        total = 0
        async with self._lock:
            for start in ("0", ">"):
                while True:
                    done = await self._handle(await self._read(start, None))
                    total += done
                    if done == 0:
                        break
        return total

    async def run(self, idle_block_ms: int = 200) -> None:
        """Store forever: first what this consumer had read before a restart, then what others left."""
        me = asyncio.current_task()
        started = False
        while True:
            if me is not None and me.cancelling():  # redis-py can swallow a cancellation (nurture.bus)
                raise asyncio.CancelledError
            try:
                if not started:  # in the loop: Redis down at the start is retried like any other error
                    await self.ensure_groups()
                    await self._claim()
                    await self.drain()
                    started = True
                entries = await self._read(">", idle_block_ms)
                if entries and self._linger and sum(len(items) for _, items in entries) < self._batch:
                    await asyncio.sleep(self._linger)  # a trickle: wait a moment so one transaction takes more
                    entries += await self._read(">", None)
                async with self._lock:
                    if entries:
                        await self._handle(entries)
                    elif time.monotonic() - self._claimed_at > self._claim_idle_ms / 1000:
                        await self._claim()
                    if not entries and await self._handle(await self._read("0", None)) == 0:
                        pending = await self._read("0", None)
                        if any(items for _, items in pending):
                            await asyncio.sleep(1.0)  # they failed just now: the database is down
            except asyncio.CancelledError:
                raise
            except RedisError as exc:  # Redis away or slow (a blocking read past the socket's timeout)
                log.warning("collect stream: Redis: %r; retrying", exc)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("collect stream: consumer loop error; retrying")
                await asyncio.sleep(1.0)

    async def stored_up_to_now(self, timeout: float) -> bool:
        """Wait until every entry appended before this call is stored (True), or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        pipe = self._redis.pipeline(transaction=False)
        for key in self._keys:
            pipe.xrevrange(key, count=1)
        marks = {key: last[0][0] for key, last in zip(self._keys, await pipe.execute(), strict=True) if last}
        while marks:
            pipe = self._redis.pipeline(transaction=False)
            for key, mark in marks.items():
                pipe.xrange(key, min="-", max=mark, count=1)
            marks = {key: mark for (key, mark), left in zip(marks.items(), await pipe.execute(), strict=True) if left}
            left_s = deadline - time.monotonic()
            if not marks:
                break
            if left_s <= 0:
                return False
            with contextlib.suppress(TimeoutError):  # stored here, or by another process: look again
                await asyncio.wait_for(self._stored.wait(), min(left_s, 0.05))
        return True


_LETTER_ID = re.compile(r"collect:(\d{1,4}):(\d{1,20}-\d{1,20})")


class CollectDeadLetters:
    """The collect stream's dead letters as scoring's Admin service lists and retries them (ids
    `collect:<shard>:<dead entry>`). A retry stores the entry as the stream's reader would, under its lock;
    stored, it leaves the dead letters; failing again, it stays with the new error."""

    def __init__(self, stream: CollectStream, shards: int) -> None:
        self._stream = stream
        self._shards = shards

    async def list(self, limit: int) -> tuple[list[DeadLetter], int]:
        client = self._stream._redis
        total = 0
        found: list[DeadLetter] = []
        for shard in range(self._shards):
            key = collectstream.dead_key(shard)
            total += int(await client.xlen(key))
            rows = cast(list[tuple[bytes, dict[bytes, bytes]]] | None, await client.xrevrange(key, count=limit))
            found += [_letter(shard, entry_id, fields) for entry_id, fields in rows or []]
        found.sort(key=lambda d: d.at.timestamp() if d.at else 0.0, reverse=True)
        return found[:limit], total

    async def retry(self, letter_id: str, actor: str) -> Retried | None:
        match = _LETTER_ID.fullmatch(letter_id)
        if match is None or int(match[1]) >= self._shards:
            return None
        shard, dead_id = int(match[1]), match[2]
        client, key = self._stream._redis, collectstream.dead_key(shard)
        log.info("collect stream: %s retries dead letter %s", actor or "someone", letter_id)
        async with self._stream._lock:
            rows = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(key, min=dead_id, max=dead_id))
            if not rows:
                return None
            fields = rows[0][1]
            entry = {k: v for k, v in fields.items() if k not in (b"entry", b"error")}
            try:
                await self._stream._store_batch([(fields.get(b"entry", dead_id.encode()), entry)])
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:2000]
                log.warning("collect stream: retried dead letter %s failed again: %s", letter_id, error)
                await client.xadd(key, {**fields, b"error": error.encode()})  # type: ignore[dict-item]
                await client.xdel(key, dead_id)
                return Retried(False, error)
            await client.xdel(key, dead_id)
        return Retried(True)


def _letter(shard: int, entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    dead_id = entry_id.decode()
    try:
        events = collectstream.decode_events(fields.get(b"e", b""))
        types = sorted({e.type for e in events})
        summary = f"{len(events)} website event{'s' if len(events) != 1 else ''} ({', '.join(types)}) of a visitor"
    except collectstream.MalformedEntry:
        summary = "an unreadable collect entry"
    return DeadLetter(id=f"collect:{shard}:{dead_id}", kind="collect", lead_id="", summary=summary,
                      error=(fields.get(b"error") or b"").decode("utf-8", "replace"),
                      at=datetime.fromtimestamp(int(dead_id.split("-")[0]) / 1000, tz=UTC))
