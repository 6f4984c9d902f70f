"""The event bus: Redis Streams, sharded by lead, read by consumer groups.

Scoring publishes one message per stored event (and per lead change) to `nurture:bus:{s<N>}` with
N = crc32(lead_id) % shards, so one lead's messages keep their order. Each consuming service reads with
its own consumer group and acknowledges only after its own commit; what it had read but not
acknowledged before a crash is read again on restart (handlers are idempotent by message id).
A message is a `nurture.busmessage.BusMessage` (contract: protos/nurture/api/bus/v1/bus.proto); the
entry's field `m` holds `busmessage.encode(...)`, which is what handlers get back, decoded and typed.
A message whose handler keeps failing is moved to `nurture:bus-dead:{<group>}` after MAX_DELIVERIES,
so one bad message never blocks a shard; the dead letter carries the entry itself, so it can be retried
whatever the stream has kept.

A shard's stream is trimmed only behind every consumer group (`trim_consumed`): an entry leaves once
each group has read and acknowledged it, never because the stream is long, so a consumer that is down
for hours loses nothing (its backlog waits in Redis memory; docs/CAPACITY.md sizes it). Each consumer
trims the shards it reads every TRIM_EVERY_S seconds once they hold more than STREAM_KEEP entries.

A consumer given an `Ownership` (`nurture.partitions`) reads only the shards of the partitions its
replica owns (shard s belongs to partition s mod partitions). When it gains a shard, it first claims
every entry pending there (XAUTOCLAIM: what the shard's last owner read and did not acknowledge) and
handles those before any new entry, so one lead's messages keep their order across a hand-over. A
handler refused by the fencing check (`Fenced`) leaves its entries pending for the new owner, without
counting a failure towards the dead letters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from opentelemetry import trace
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT, KeyT, StreamIdT

from nurture import busmessage, telemetry
from nurture.admin import DeadLetter, Retried
from nurture.busmessage import BusMessage
from nurture.partitions import Fenced, Ownership
from nurture.redisconn import AsyncRedis, ensure_group, execute_replicated, is_cluster, shard_of, sharded_key
from nurture.telemetry import batch_parent, carrier_contexts, tracer

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

Handler = Callable[[list[BusMessage]], Awaitable[None]]
MAX_DELIVERIES = 5
# Entries a shard keeps after every group has acknowledged them (for operators reading recent
# traffic); trimming looks at a shard again after TRIM_EVERY_S seconds.
STREAM_KEEP = 100_000
TRIM_EVERY_S = 30.0


_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")

# One stream entry as redis-py reads it: its id and its fields, both raw bytes.
_Entry = tuple[bytes, dict[bytes, bytes]]


def stream_key(shard: int) -> str:
    return sharded_key("bus", shard)


def dead_key(group: str) -> str:
    return f"nurture:bus-dead:{{{group}}}"


class Publisher:
    """Appends bus messages. `wait_replicas` > 0 (NURTURE_REDIS_WAIT_REPLICAS): a publish returns only once
    that many replicas of each master written hold the entries (WAIT), else raises NotReplicated:
    Redis replicates asynchronously, and a master that dies before passing an acknowledged entry on loses
    it in the failover; scoring deletes an outbox row only after its publish returned, so with this the
    SQL record keeps every event until a replica has it (docs/ARCHITECTURE.md, "Redis failover")."""

    def __init__(self, client: AsyncRedis, shards: int, wait_replicas: int = 0) -> None:
        self._redis = client
        self._shards = shards
        self._wait_replicas = wait_replicas

    async def publish(self, messages: Sequence[BusMessage]) -> None:
        """Append messages to their lead's shard, in order."""
        await self.publish_encoded([(m.lead_id, busmessage.encode(m), None) for m in messages])

    async def publish_encoded(self, entries: Sequence[tuple[str, str, str | None]]) -> None:
        """Append already encoded messages `(lead_id, busmessage.encode(...), trace carrier JSON or
        None)`, in order. The trace rides beside the message (field `t`), as a header would."""
        if not entries:
            return
        pipe = self._redis.pipeline(transaction=False)
        keys: set[str] = set()
        for lead_id, payload, carrier in entries:
            fields = {"m": payload, "t": carrier} if carrier else {"m": payload}
            keys.add(stream_key(shard_of(lead_id, self._shards)))
            # No MAXLEN: a cap would drop entries a lagging group has not read (trim_consumed trims).
            pipe.xadd(stream_key(shard_of(lead_id, self._shards)), fields)  # type: ignore[arg-type]
        await execute_replicated(self._redis, pipe, keys, self._wait_replicas)


def _handling_span(name: str, carriers: list[bytes], count: int) -> AbstractContextManager[trace.Span]:
    """The consumer's work on a batch joins the trace of the request that caused its first sampled
    message and links the other sampled ones, so one event is one trace from the gateway through every
    consumer (and a batch of unsampled events records nothing: telemetry.batch_parent)."""
    parent, links = batch_parent(carrier_contexts(carriers))
    return _tracer.start_as_current_span(name, context=parent, links=links, kind=trace.SpanKind.CONSUMER,
                                         attributes={"messaging.system": "redis", "messages": count})


class Consumer:
    """Reads every shard for one consumer group and hands batches to an idempotent handler."""

    def __init__(
        self,
        client: AsyncRedis,
        *,
        group: str,
        shards: int,
        handler: Handler,
        batch: int = 500,
        consumer: str | None = None,
        linger: float = 0.05,
        ownership: Ownership | None = None,
        most: int | None = None,
    ) -> None:
        self._redis = client
        self._group = group
        self._span_name = f"bus handle {group}"
        self._shards = shards
        self._handler = handler
        self._batch = batch
        self._linger = linger  # seconds a consumer waits after a small read (latency for fewer calls)
        # At most this many messages per handler call (None: a read's every shard in one call). A read
        # takes up to `batch` entries from each shard, so a backlog over every shard made one call of
        # shards x batch: a handler that must finish inside a lease (a replicated fold) is handed the
        # read's shards in groups of whole shards up to this many instead (a shard over it goes alone).
        self._most = most
        # Stable per host and process slot so a restarted process re-reads its own pending entries.
        self._consumer = consumer or f"{group}-{socket.gethostname()}-{os.environ.get('NURTURE_REPLICA', '0')}"
        self._lock = asyncio.Lock()
        # Keyed by stream and entry: entry ids are per stream, and shards written in the same
        # millisecond share them (one shard's success must not reset another's failure count).
        self._failures: dict[tuple[bytes, bytes], int] = {}
        self._ready = False
        self._waiting: dict[str, asyncio.Task[list[tuple[bytes, list[_Entry]]]]] = {}  # on a cluster
        self._ownership = ownership
        # The shards read now: every one, or (with an ownership) those taken over from their last owner.
        self._active: set[int] = set(range(shards)) if ownership is None else set()
        self._trimmed_at = 0.0  # loop time of the last trim pass (0: none yet)

    async def ensure_groups(self) -> None:
        if self._ready:
            return
        for shard in range(self._shards):
            await ensure_group(self._redis, stream_key(shard), self._group)
        self._ready = True

    async def _follow_ownership(self) -> int:
        """Read the shards of the partitions owned now: stop reading those given up; take over those
        gained (their pending entries claimed and handled first, in order). Returns how many entries
        the take-overs handled."""
        if self._ownership is None:
            return 0
        owned = self._ownership.owned()
        now = {s for s in range(self._shards) if s % self._ownership.partitions in owned}
        for shard in sorted(self._active - now):
            self._active.discard(shard)
            task = self._waiting.pop(stream_key(shard), None)
            if task is not None:  # entries it read stay pending: the new owner claims them
                task.cancel()
        handled = 0
        for shard in sorted(now - self._active):
            handled += await self._take_over(shard)
            self._active.add(shard)
        return handled

    async def _take_over(self, shard: int) -> int:
        key = stream_key(shard)
        start: StreamIdT = "0-0"
        claimed = 0
        while True:
            # Not justid: redis-py then drops the cursor the loop needs. The answer: [next cursor, claimed
            # entries, deleted ids].
            answer = await self._redis.xautoclaim(key, self._group, self._consumer, 0, start_id=start,
                                                  count=self._batch)
            start = cast(bytes, answer[0])
            claimed += len(cast(list[_Entry], answer[1]))
            if start in (b"0-0", "0-0"):
                break
        handled = 0
        while True:
            entries = await self._read("0", None, [key])
            if not any(items for _, items in entries):
                break
            done = await self._handle(entries)
            handled += done
            if done == 0:
                break
        if claimed:
            log.info("bus %s: took shard %d over with %d pending entries (%d handled)", self._group, shard,
                     claimed, handled)
        return handled

    async def _read(self, start: str, block: int | None, keys: list[str] | None = None
                    ) -> list[tuple[bytes, list[_Entry]]]:
        if keys is None:
            keys = [stream_key(s) for s in sorted(self._active)]
        if not keys:  # no shard owned (yet): nothing to read, but a blocking read still waits
            if block:
                await asyncio.sleep(block / 1000)
            return []
        if not is_cluster(self._redis):
            return await self._xreadgroup({k: start for k in keys}, block)
        # A cluster runs a multi-key command only when all its keys share a slot, and each shard's stream
        # has a slot of its own: every stream is read by its own call, on its own node, side by side.
        if block is None:
            found = await asyncio.gather(*(self._xreadgroup({k: start}, None) for k in keys))
            return [item for items in found for item in items]
        return await self._wait_any(keys, start, block)

    async def _wait_any(self, keys: list[str], start: str, block: int) -> list[tuple[bytes, list[_Entry]]]:
        """Blocking reads on a cluster: one per stream, answered as soon as any stream has entries. The
        others stay outstanding for the next call (cancelled, they could lose what they had just read
        to this consumer's pending list until a restart reads it back)."""
        for key in keys:
            if key not in self._waiting:
                self._waiting[key] = asyncio.create_task(self._xreadgroup({key: start}, block))
        await asyncio.wait(self._waiting.values(), return_when=asyncio.FIRST_COMPLETED)
        out: list[tuple[bytes, list[_Entry]]] = []
        failed: BaseException | None = None
        for key, task in list(self._waiting.items()):
            if task.done():
                del self._waiting[key]
                if task.exception() is not None:
                    failed = failed or task.exception()
                else:
                    out += task.result()
        if failed is not None:
            if not out:
                raise failed
            # What the other streams gave is handled now; the failed stream is read again next time.
            log.warning("bus %s: a stream's read failed: %r", self._group, failed)
        return out

    def _stop_waiting(self) -> None:
        for task in self._waiting.values():
            task.cancel()
        self._waiting.clear()

    async def _xreadgroup(self, streams: dict[KeyT, StreamIdT], block: int | None) -> list[tuple[bytes, list[_Entry]]]:
        try:
            result = await self._redis.xreadgroup(
                self._group, self._consumer, streams, count=self._batch, block=block
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The group or its stream is gone (Redis flushed or restarted without its data, a group
            # destroyed by hand): make them again and read on, or the consumer would fail forever.
            # From the start of what is left: a repeat is dropped by the handlers, a skip is lost.
            log.warning("bus %s: consumer group missing (%s); creating it again", self._group, exc)
            self._ready = False
            await self.ensure_groups()
            result = await self._redis.xreadgroup(
                self._group, self._consumer, streams, count=self._batch, block=block
            )
        # RESP2 (this client's protocol): a list of [stream, entries], or None when the wait timed out.
        return list(cast(list[tuple[bytes, list[_Entry]]] | None, result) or [])

    async def _handle(self, entries: list[tuple[bytes, list[_Entry]]]) -> int:
        batches = [b for b in (self._parse(stream, items) for stream, items in entries) if b[1]]
        if self._most is None:
            return await self._handle_batches(batches)
        handled = 0
        group: list[tuple[bytes, list[bytes], list[BusMessage], list[bytes]]] = []
        for b in batches:  # in the order read: a shard read twice (the linger's second read) stays in order
            if group and sum(len(ids) for _, ids, _, _ in group) + len(b[1]) > self._most:
                handled += await self._handle_batches(group)
                group = []
            group.append(b)
        return handled + (await self._handle_batches(group) if group else 0)

    async def _handle_batches(self, batches: list[tuple[bytes, list[bytes], list[BusMessage], list[bytes]]]) -> int:
        if len(batches) > 1:
            # Every shard's messages in one handler call: a consumer's cost is mostly per call (one
            # transaction, one round of RPCs), and at modest rates each shard holds only a few.
            try:
                await self._call([m for _, _, ms, _ in batches for m in ms], [c for *_, cs in batches for c in cs])
            except Exception:
                log.warning("bus %s: a batch across %d shards failed; handling shard by shard", self._group,
                            len(batches), exc_info=True)
            else:
                await self._ack_all([(stream, ids) for stream, ids, _, _ in batches])
                return sum(len(ids) for _, ids, _, _ in batches)
        handled = 0
        for stream, ids, messages, carriers in batches:
            try:
                await self._call(messages, carriers)
            except Fenced as exc:
                # Not a failure of the messages: this replica lost the shard's partition; they stay
                # pending, and its new owner claims and handles them.
                log.info("bus %s: %d messages left to the new owner: %s", self._group, len(messages), exc)
                continue
            except Exception as exc:
                log.exception("bus %s: handler failed on %d messages", self._group, len(messages))
                await self._record_failure(stream, ids, messages, f"{type(exc).__name__}: {exc}"[:2000])
                continue
            await self._ack(stream, ids)
            handled += len(ids)
        return handled

    def _parse(self, stream: bytes, items: list[_Entry]
               ) -> tuple[bytes, list[bytes], list[BusMessage], list[bytes]]:
        messages: list[BusMessage] = []
        ids: list[bytes] = []
        carriers: dict[bytes, None] = {}
        for entry_id, fields in items:
            ids.append(entry_id)
            try:
                messages.append(busmessage.decode(fields[b"m"]))
            except (KeyError, busmessage.MalformedMessage):
                log.error("bus %s: dropping malformed entry %r", self._group, entry_id)
            if fields.get(b"t"):
                carriers[fields[b"t"]] = None
        return stream, ids, messages, list(carriers)

    async def _call(self, messages: list[BusMessage], carriers: list[bytes]) -> None:
        if messages:
            with _handling_span(self._span_name, carriers, len(messages)) as span:
                # The leads and events handled (journeys' per-lead work, crm_sync's pushes, ...): what ops
                # find a lead's traces by. A lead change scoring announces has an id of its own
                # ("lead_updated:<lead>:<version>"), not an event's.
                telemetry.tag_ids(span, lead_ids=(m.lead_id for m in messages),
                                  event_ids=(m.id for m in messages if ":" not in m.id))
                await self._handler(messages)

    async def _ack(self, stream: bytes, ids: list[bytes]) -> None:
        await self._redis.xack(stream, self._group, *ids)
        for entry_id in ids:
            self._failures.pop((stream, entry_id), None)

    async def _ack_all(self, acks: list[tuple[bytes, list[bytes]]]) -> None:
        """Several shards' acknowledgements in one round trip (a pipeline, never MULTI: on a cluster each
        XACK goes to its stream's node), where one XACK each cost a round trip per shard a batch read."""
        if len(acks) == 1:
            await self._ack(*acks[0])
            return
        pipe = self._redis.pipeline(transaction=False)
        for stream, ids in acks:
            pipe.xack(stream, self._group, *ids)
        await pipe.execute()
        for stream, ids in acks:
            for entry_id in ids:
                self._failures.pop((stream, entry_id), None)

    async def _record_failure(self, stream: bytes, ids: list[bytes], messages: list[BusMessage],
                              error: str = "") -> None:
        for entry_id in ids:
            self._failures[(stream, entry_id)] = self._failures.get((stream, entry_id), 0) + 1
        dead = [i for i in ids if self._failures[(stream, i)] >= MAX_DELIVERIES]
        if dead:
            # The messages as JSON objects: a person reads dead letters.
            readable = json.dumps([m.as_dict() for m in messages], default=str)[:65536]
            for entry_id in dead:
                letter: dict[FieldT, EncodableT] = {"stream": stream, "entry": entry_id, "m": readable, "error": error}
                # The entry itself (still pending, so still on the stream): the letter is retried from it
                # once the stream has been trimmed past it.
                original = await _entry(self._redis, stream, entry_id)
                if original is not None:
                    letter["om"] = original[1].get(b"m", b"")
                    if original[1].get(b"t"):
                        letter["ot"] = original[1][b"t"]
                await self._redis.xadd(dead_key(self._group), letter)
                self._failures.pop((stream, entry_id), None)
            await self._redis.xack(stream, self._group, *dead)
            log.error("bus %s: dead-lettered %d entries after %d failures", self._group, len(dead), MAX_DELIVERIES)

    async def retry_dead(self, dead_id: str) -> Retried | None:
        """Hand one dead-lettered entry to the handler again (its original bus entry, as first read):
        delivered, it leaves the dead letters; failing, it stays, with the new error. None: no such
        dead letter."""
        key = dead_key(self._group)
        async with self._lock:
            found = await _entry(self._redis, key, dead_id)
            if found is None:
                return None
            fields = found[1]
            original = _carried(fields) or await _entry(self._redis, fields[b"stream"], fields[b"entry"])
            if original is None:
                return Retried(False, "the message is no longer on the bus (trimmed): it cannot be retried")
            _, _, messages, carriers = self._parse(fields[b"stream"], [original])
            try:
                await self._call(messages, carriers)
            except Exception as exc:
                log.warning("bus %s: retried dead letter %s failed again", self._group, dead_id, exc_info=True)
                error = f"{type(exc).__name__}: {exc}"[:2000]
                again: dict[FieldT, EncodableT] = {k: v for k, v in fields.items()}  # redis-py's key type
                again[b"error"] = error.encode()
                await self._redis.xadd(key, again)
                await self._redis.xdel(key, dead_id)
                return Retried(False, error)
            await self._redis.xdel(key, dead_id)
            log.info("bus %s: dead letter %s retried and delivered", self._group, dead_id)
            return Retried(True)

    async def _trim_now_and_then(self) -> None:
        """Every TRIM_EVERY_S, trim the shards this consumer reads behind every group (`trim_consumed`);
        a failure only postpones it (the stream is longer meanwhile, nothing is lost)."""
        now = asyncio.get_running_loop().time()
        if now - self._trimmed_at < TRIM_EVERY_S:
            return
        self._trimmed_at = now
        for shard in sorted(self._active):
            try:
                await trim_consumed(self._redis, stream_key(shard))
            except ResponseError:
                log.warning("bus %s: trimming shard %d failed; next time", self._group, shard, exc_info=True)

    async def drain(self) -> int:
        """Handle everything pending for this group right now (own unacked entries first)."""
        await self.ensure_groups()
        total = 0
        async with self._lock:
            total += await self._follow_ownership()
            for start in ("0", ">"):
                while True:
                    entries = await self._read(start, None)
                    if not any(items for _, items in entries):
                        break
                    done = await self._handle(entries)
                    total += done
                    if done == 0:
                        break
        await self._trim_now_and_then()
        return total

    async def run(self, idle_block_ms: int = 200) -> None:
        """Consume forever. Entries read before a crash are handled first."""
        try:
            await self._run(idle_block_ms)
        finally:
            self._stop_waiting()

    async def _run(self, idle_block_ms: int) -> None:
        await self.ensure_groups()
        await self.drain()
        me = asyncio.current_task()
        while True:
            if me is not None and me.cancelling():
                # A cancellation that landed inside a command can be swallowed by redis-py (8.1, its
                # plain and cluster clients alike: a loop of XACKs ran on after cancel()); the task
                # still records it, and the loop ends here.
                raise asyncio.CancelledError
            try:
                if self._ownership is not None:
                    async with self._lock:
                        await self._follow_ownership()
                # Block outside the lock so Settle's drain is never starved by an idle read.
                entries = await self._read(">", idle_block_ms)
                if entries and self._linger and sum(len(items) for _, items in entries) < self._batch:
                    # A trickle arrived: wait a moment for more, so one handler call takes many.
                    await asyncio.sleep(self._linger)
                    entries += await self._read(">", None)
                if entries:
                    async with self._lock:
                        await self._handle(entries)
                    await self._trim_now_and_then()
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


@dataclass(frozen=True)
class GroupLag:
    """One consumer group's backlog over every shard: entries not yet delivered to it (`waiting`),
    delivered but not acknowledged (`pending`), and dead-lettered after MAX_DELIVERIES (`dead`)."""

    group: str
    waiting: int
    pending: int
    dead: int


LAG_SCAN_LIMIT = 100_000  # per shard, where Redis (< 7) does not report lag itself: beyond it, a lower bound


async def lag(client: AsyncRedis, shards: int) -> list[GroupLag]:
    """Every consumer group's backlog, for operators (the console's operations page)."""
    waiting: dict[str, int] = {}
    pending: dict[str, int] = {}
    for shard in range(shards):
        key = stream_key(shard)
        try:
            groups = await client.xinfo_groups(key)
        except ResponseError:  # no such stream yet: nothing published to this shard
            continue
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else str(g["name"])
            pending[name] = pending.get(name, 0) + int(g.get("pending") or 0)
            behind = g.get("lag")
            if behind is None:  # Redis < 7: count what lies after the group's last delivered entry
                last = g.get("last-delivered-id") or b"0-0"
                last = last.decode() if isinstance(last, bytes) else str(last)
                entries = await client.xrange(key, min=f"({last}" if last != "0-0" else "-", count=LAG_SCAN_LIMIT)
                behind = len(entries or [])
            waiting[name] = waiting.get(name, 0) + int(behind)
    out = []
    for name in sorted(waiting):
        dead = await client.xlen(dead_key(name))
        out.append(GroupLag(group=name, waiting=waiting[name], pending=pending[name], dead=int(dead)))
    return out


async def _entry(client: AsyncRedis, key: bytes | str, entry_id: bytes | str) -> _Entry | None:
    found = cast(list[_Entry], await client.xrange(key, min=entry_id, max=entry_id))
    return (found[0][0], found[0][1]) if found else None


def _carried(letter: dict[bytes, bytes]) -> _Entry | None:
    """The bus entry a dead letter carries (letters written before they did carry none)."""
    if not letter.get(b"om"):
        return None
    fields = {b"m": letter[b"om"]}
    if letter.get(b"ot"):
        fields[b"t"] = letter[b"ot"]
    return letter[b"entry"], fields


def _stream_id(raw: bytes | str | None) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw or "0-0")
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def trim_consumed(client: AsyncRedis, key: str, keep: int | None = None) -> int:
    """Trim one shard's stream behind every consumer group, when it holds more than `keep` entries:
    up to the oldest entry some group has not acknowledged (its oldest pending one) or not yet read (after
    its last delivered one), whichever comes first; a stream no group reads yet is left whole. Returns
    the number of entries removed. Safe to run from every consumer at once: each computes the same bound
    from Redis, and trimming to an older bound than another's removes nothing. `keep`: STREAM_KEEP."""
    if int(await client.xlen(key)) <= (STREAM_KEEP if keep is None else keep):
        return 0
    try:
        groups = await client.xinfo_groups(key)
    except ResponseError:
        return 0
    if not groups:
        return 0
    bound: tuple[int, int] | None = None
    for g in groups:
        # Everything after the last delivered entry is unread; an entry at or before it may be pending.
        last = _stream_id(g.get("last-delivered-id"))
        oldest = (last[0], last[1] + 1)
        if int(g.get("pending") or 0):
            summary = await client.xpending(key, g["name"])
            if summary and summary.get("min"):
                oldest = min(oldest, _stream_id(summary["min"]))
        bound = oldest if bound is None else min(bound, oldest)
    assert bound is not None
    # MINID removes the entries older than the bound; approximate (whole nodes only) keeps a few more.
    return int(await client.xtrim(key, minid=f"{bound[0]}-{bound[1]}", approximate=True))


class BusDeadLetters:
    """A consumer group's dead letters as the Admin service lists and retries them (ids `bus:<entry>`)."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer

    async def list(self, limit: int) -> tuple[list[DeadLetter], int]:
        client, key = self._consumer._redis, dead_key(self._consumer._group)
        total = int(await client.xlen(key))
        out = []
        rows = list(cast(list[_Entry] | None, await client.xrevrange(key, count=limit)) or [])
        for entry_id, fields in rows:
            dead_id = entry_id.decode()
            lead_id, summary = "", ""
            try:
                first = json.loads(fields.get(b"m") or b"[]")
                # The entry names its own message; the batch it failed in is kept whole for reading.
                original = _carried(fields) or await _entry(client, fields[b"stream"], fields[b"entry"])
                message = busmessage.decode(original[1][b"m"]) if original else None
                if message is not None:
                    lead_id, summary = message.lead_id, f"{message.type} ({message.id})"
                elif first:
                    summary = f"one of {len(first)} messages, first {first[0].get('type')} (no longer on the bus)"
            except (ValueError, KeyError, busmessage.MalformedMessage):
                summary = "unreadable entry"
            out.append(DeadLetter(id=f"bus:{dead_id}", kind="bus", lead_id=lead_id, summary=summary,
                                  error=(fields.get(b"error") or b"").decode("utf-8", "replace"),
                                  at=datetime.fromtimestamp(int(dead_id.split("-")[0]) / 1000, tz=UTC)))
        return out, total

    async def retry(self, letter_id: str, actor: str) -> Retried | None:
        if not letter_id.startswith("bus:"):
            return None
        entry = letter_id[4:]
        if not _ENTRY_ID.fullmatch(entry):
            return None
        log.info("bus %s: %s retries dead letter %s", self._consumer._group, actor or "someone", entry)
        return await self._consumer.retry_dead(entry)
