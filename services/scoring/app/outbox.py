"""Outbox publishing: committed outbox rows go to the bus in commit order, then are deleted."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar

from nurture.aio import wait_event
from nurture.bus import Publisher
from nurture.db import Database
from nurture.telemetry import batch_parent, carrier_contexts, redis_span, tracer
from services.scoring import storage as st
from services.scoring.app.base import CoreBase
from services.scoring.domain.records import OutboxRow

log = logging.getLogger(__name__)
T = TypeVar("T")
_tracer = tracer(__name__)


class OutboxRows(CoreBase):
    def pending_outbox(self, limit: int = 2000, after: int = 0, up_to: int | None = None) -> list[OutboxRow]:
        """`(seq, lead_id, message JSON, trace carrier JSON)` in commit order, published as stored; the
        seqs above `after`, at most `up_to`."""
        with self._sessions() as s:
            return st.pending_outbox(s, limit, after, up_to)

    def outbox_high(self) -> int | None:
        with self._sessions() as s:
            return st.outbox_high(s)

    def mark_published(self, seqs: Sequence[int]) -> None:
        with self._sessions() as s:
            st.mark_published(s, seqs)


class HandOff:
    """One ingest transaction's place in the publishing order (`Outbox.reserve`): taken while the
    transaction holds its leads' row locks, so for any one lead the places follow the commits; then
    `commit` with the rows it wrote, or `fail`. Called from the database's worker threads.
    `announced` (made and resolved on the event loop) is resolved once every row of the place is on
    the bus: the ingest's callers are answered then, not at the commit (see `IngestQueue.submit`).
    The first `again` rows were committed before (a retried event's lead's rows still in the outbox):
    those this process has published or queued already are left out when the place settles."""

    __slots__ = ("again", "announced", "rows", "state")

    def __init__(self, announced: asyncio.Future[None] | None = None) -> None:
        self.rows: list[OutboxRow] = []
        self.again = 0
        self.state = "open"
        self.announced = announced

    def commit(self, rows: list[OutboxRow], again: int = 0) -> None:
        self.rows = rows
        self.again = again
        self.state = "committed"

    def fail(self) -> None:
        self.state = "failed"


def placed(places: list[HandOff],
           write: Callable[[], tuple[T, list[OutboxRow], list[OutboxRow]]]) -> tuple[T, list[OutboxRow]]:
    """Run a write that takes its place in the publishing order (the write appends the place `reserve`
    gave it to `places`, once its leads are locked), then settle that place: committed with the rows the
    write read again and the rows it wrote, or failed if the write raised (rolled back, or its commit
    failed: none of its rows exists). Returns the write's result and the rows to publish."""
    try:
        result, again, written = write()
    except BaseException:
        for place in places:
            place.fail()
        raise
    for place in places:
        place.commit(again + written, again=len(again))
    return result, again + written


def _announce(announced: asyncio.Future[None] | None) -> None:
    if announced is not None and not announced.done():
        announced.set_result(None)


class Outbox:
    """Publishes committed outbox rows to the bus in commit order, and has them deleted.

    Two ways in. The hot paths (ingest, and lead upserts through `write`) publish the rows they commit
    from memory: their delete rides on the next such transaction (`take_published`), so an event or a
    CRM batch of lead upserts costs one transaction, not three (a sweep: its reads and its delete, four
    trips to the database's thread more).
    Several such transactions may be in flight at once (on PostgreSQL), so each takes its place in
    one ordered list (`reserve`) while it holds its leads' row locks, before its commit; the list is
    published in that order as the commits are confirmed (`settle`), and a place whose transaction
    failed is dropped. A place's `announced` future is resolved once its rows are on the bus (by the
    drain, or by a sweep that published them), so the write answers its callers only then. A
    transaction that needs a lead another holds waits for that one's commit, so its place comes
    after: per lead, the bus has the messages in commit order (journeys relies on it).
    Every other write asks for a sweep (`sweep_soon`), which publishes what SQL holds in seq order; it
    also runs at startup, on settle and after a Redis failure, so a row committed before a crash
    always goes out (perhaps twice: consumers drop repeats by message id).
    """

    # Published rows whose delete waits for an ingest transaction; past this (or a quiet second) the
    # outbox loop deletes them itself.
    MAX_UNDELETED = 5000
    DELETE_BATCH = 200
    RECENT = 20_000

    def __init__(self, db: Database, store: OutboxRows, publisher: Publisher) -> None:
        self._db = db
        self._store = store
        self._publisher = publisher
        self._lock = asyncio.Lock()
        self._ready = asyncio.Event()
        # Settled places' rows, in order, each with the future its callers wait on (`HandOff.announced`).
        self._queue: list[tuple[list[OutboxRow], asyncio.Future[None] | None]] = []
        self._published: list[int] = []
        self._deleting: set[int] = set()  # published, their delete in an ingest transaction in flight
        # The last RECENT seqs this process published (or is publishing), oldest first. A transaction
        # that read its leads' rows still in the outbox (`HandOff.again`) may have read some just before
        # another transaction's delete of them committed (PostgreSQL: a statement sees what was
        # committed when it began), after which `_deleting` no longer holds them: they are out already.
        self._recent: dict[int, None] = {}
        self._sweep = True
        # Ingest transactions' places, oldest first (`reserve`); worker threads append under the lock.
        self._order: deque[HandOff] = deque()
        self._order_lock = threading.Lock()

    def sweep_soon(self) -> None:
        """A write other than those that publish their own rows (ingest, `write`) committed outbox
        rows: the sweep publishes them."""
        self._sweep = True
        self._ready.set()

    def reserve(self, announced: asyncio.Future[None] | None = None) -> HandOff:
        """A place in the publishing order for an ingest transaction, taken while it holds its leads'
        row locks and before it commits (from a database worker thread); `announced` is resolved once
        its rows are on the bus."""
        place = HandOff(announced)
        with self._order_lock:
            self._order.append(place)
        return place

    def settle(self) -> None:
        """On the event loop, after an ingest transaction's outcome: the places at the head of the
        order whose transactions committed go to the publishing queue, those that failed are
        dropped; it stops at the first still open (its rows would go before the ones behind it)."""
        with self._order_lock:
            while self._order and self._order[0].state != "open":
                place = self._order.popleft()
                if place.state == "committed" and place.again:
                    # Every place before this one is queued or published by now: what of the rows
                    # read again is this process's goes out ahead of this place anyway.
                    queued = {row.seq for rows, _ in self._queue for row in rows}
                    again = [row for row in place.rows[:place.again] if row.seq not in self._recent
                             and row.seq not in queued and row.seq not in self._deleting]
                    if again:  # published longer ago than RECENT seqs, their delete not taken yet
                        published = set(self._published)
                        again = [row for row in again if row.seq not in published]
                    place.rows = again + place.rows[place.again:]
                if place.state == "committed" and place.rows:
                    self._queue.append((place.rows, place.announced))
                    self._ready.set()
                elif place.state == "committed":  # nothing written, or a sweep published it all
                    _announce(place.announced)

    async def write(self, fn: Callable[[list[int], Callable[[], HandOff]], T], wait: float) -> tuple[T, bool]:
        """A write that publishes its outbox rows from memory, as ingest does (a lead upsert):
        `fn(published, reserve)` runs in the database executor, deletes `published` in its
        transaction and takes its place with `reserve` once its leads are locked (`Leads.upsert_leads`).
        Returns its result and whether its rows were on the bus within `wait` seconds (not: Redis
        away; they are stored, and go out with the next sweep)."""
        # Shielded: the write's outcome is settled (its place in the order, the deletes it took) even
        # when its caller gives up meanwhile.
        task = asyncio.ensure_future(self.commit(fn))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        result, announced = await asyncio.shield(task)
        if not announced.done():
            try:
                async with asyncio.timeout(max(0.0, wait)):
                    await asyncio.shield(announced)
            except TimeoutError:
                return result, False
        return result, True

    async def commit(self, fn: Callable[[list[int], Callable[[], HandOff]], T], *, urgent: bool = False
                     ) -> tuple[T, asyncio.Future[None]]:
        """Run a write that publishes its rows from memory (an ingest batch, a lead upsert) in the
        database executor, `urgent` as `Database.run` says: `fn(published, reserve)` deletes the
        published rows it is handed and takes its place in the order with `reserve`. Returns its result
        and the future resolved once its rows are on the bus; its place is settled either way."""
        published = self.take_published()
        announced: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            result = await self._db.run(fn, published, functools.partial(self.reserve, announced), urgent=urgent)
        except BaseException:
            self.give_back(published)
            self.settle()  # the places behind this one's may be waiting for its outcome
            # A commit whose answer was lost (the connection broke) may have stored its rows after all:
            # the sweep publishes whatever SQL holds, in seq order.
            self.sweep_soon()
            raise
        self.deleted(published)
        self.settle()
        return result, announced

    def take_published(self) -> list[int]:
        """The published rows' seqs, for the next ingest transaction to delete, once there are enough
        to be worth a statement (under load a transaction commits every few milliseconds, and the
        DELETE was one of its seven statements). Until that transaction ends (`deleted`, `give_back`)
        a sweep does not publish them again (it may read them before their delete commits)."""
        if len(self._published) < self.DELETE_BATCH:
            return []
        taken, self._published = self._published, []
        self._deleting.update(taken)
        return taken

    def deleted(self, seqs: list[int]) -> None:
        """The ingest transaction that deleted these committed."""
        self._deleting.difference_update(seqs)

    def give_back(self, seqs: list[int]) -> None:
        """An ingest transaction that was to delete these rolled back: they stay to be deleted."""
        self._deleting.difference_update(seqs)
        self._published.extend(seqs)

    async def flush(self) -> int:
        """Publish everything committed before it started (the sweep), in seq order; returns how many
        rows went out. One pass up to the highest seq it first sees: a row committed before the start
        has a seq at most that, and rows committed meanwhile are their writers' (an ingest's queue
        here or in another replica, or the sweep its write asks for after it). Reading until the
        outbox was empty never ended while callers answered by this sweep kept committing more."""
        async with self._lock:
            self._sweep = False
            done = 0
            published, self._published = self._published, []
            if published:
                await self._db.run(self._store.mark_published, published)
            high = await self._db.run(self._store.outbox_high)
            after = 0
            while high is not None:
                read = await self._db.run(self._store.pending_outbox, 2000, after, high)
                if not read:
                    break
                after = read[-1].seq
                pending = [row for row in read if row.seq not in self._deleting]  # out already
                if not pending:
                    continue
                await self._publish(pending)
                await self._db.run(self._store.mark_published, [seq for seq, *_ in pending])
                done += len(pending)
                swept = {seq for seq, *_ in pending}
                kept: list[tuple[list[OutboxRow], asyncio.Future[None] | None]] = []
                for rows, announced in self._queue:
                    rest = [row for row in rows if row.seq not in swept]
                    if rest:
                        kept.append((rest, announced))
                    else:  # every row of the place is out: its callers may be answered
                        _announce(announced)
                self._queue = kept
                with self._order_lock:  # committed rows not settled yet, already out
                    for place in self._order:
                        place.again = sum(1 for row in place.rows[:place.again] if row.seq not in swept)
                        place.rows = [row for row in place.rows if row.seq not in swept]
            return done

    async def _drain(self) -> None:
        async with self._lock:
            # A sweep asked for meanwhile holds a row committed before some of the queue (say a
            # lead_updated before that lead's next event): it goes first, the sweep takes the queue.
            while self._queue and not self._sweep:
                taken, self._queue = self._queue, []
                rows = [row for place_rows, _ in taken for row in place_rows]
                try:
                    await self._publish(rows)
                except BaseException:
                    # Back at the head, for the sweep that follows a failure: it publishes them from
                    # SQL and answers their callers (they are still waiting).
                    self._queue[:0] = taken
                    raise
                self._published.extend(row.seq for row in rows)
                for _, announced in taken:
                    _announce(announced)

    async def _publish(self, rows: list[OutboxRow]) -> None:
        # Remembered as out before they are: a place settling meanwhile must not send them again (if
        # this fails they go back to the head of the queue, or to the sweep: still ahead of it).
        recent = self._recent
        for row in rows:
            recent[row.seq] = None
        if len(recent) > self.RECENT:
            for seq in list(itertools.islice(recent, len(recent) - self.RECENT)):
                del recent[seq]
        # The span joins the first sampled request's trace and links the other sampled ones (each
        # event's messages carry their own trace to the consumers anyway); each distinct carrier is
        # read once.
        parent, links = batch_parent(carrier_contexts(dict.fromkeys(row.trace for row in rows if row.trace)))
        with _tracer.start_as_current_span("publish", context=parent, links=links), \
                redis_span("redis XADD bus", messages=len(rows)):
            await self._publisher.publish_encoded([(row.lead_id, row.payload, row.trace) for row in rows])

    async def run(self) -> None:
        while True:
            woken = await wait_event(self._ready, 1.0)
            self._ready.clear()
            try:
                if self._sweep:  # rows other writes left in SQL, and the queue with them, in seq order
                    await self.flush()
                elif self._queue:
                    await self._drain()
                if self._published and (not woken or len(self._published) > self.MAX_UNDELETED):
                    async with self._lock:
                        published, self._published = self._published, []
                        await self._db.run(self._store.mark_published, published)
            except Exception:  # Redis down: rows stay in the outbox and the sweep sends them later.
                log.exception("outbox publishing failed; will retry")
                self._sweep = True
                await asyncio.sleep(0.5)
