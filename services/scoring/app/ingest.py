"""The ingest pipeline: concurrent IngestEvents calls merged into one group-committed transaction that
stores, scores and announces a batch of events."""

from __future__ import annotations

import asyncio
import functools
import itertools
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from opentelemetry import trace
from sqlalchemy import Connection

from nurture import jsoncodec
from nurture.busmessage import BusMessage
from nurture.clock import Clock
from nurture.errors import Unconfirmed
from nurture.telemetry import batch_parent, tag_ids, traceparent_contexts, tracer
from services.scoring import storage as st
from services.scoring.app.base import CoreBase
from services.scoring.app.outbox import HandOff, Outbox, placed
from services.scoring.domain import messages
from services.scoring.domain.profile import apply_outcome, next_lapse
from services.scoring.domain.records import EventIn, EventResult, LeadRecord, OutboxRow
from services.scoring.domain.rules import bounded_score
from services.scoring.domain.validation import event_problem

_tracer = tracer(__name__)

# How long an ingest waits, after its commit, for its messages to be on the bus (`submit`), when its
# caller has no deadline (the servicer passes what is left of a caller's; the mesh's is 5 s).
PUBLISH_WAIT_S = 3.0

# A call waiting in the queue: its events, its span, and the future its results go to with the
# future resolved once they are on the bus.
_Waiting = tuple[list[EventIn], trace.SpanContext, asyncio.Future[tuple[list[EventResult], asyncio.Future[None]]]]


class Ingest(CoreBase):
    def ingest(
        self, batch: Sequence[EventIn], now: datetime, published: Sequence[int] = (),
        reserve: Callable[[], HandOff] | None = None,
    ) -> tuple[list[EventResult], list[OutboxRow]]:
        """Store and score a batch in one transaction. Bad events are rejected one by one; the good
        ones are all committed together. Returns the results and the outbox rows to publish, which the
        caller publishes from memory, in the order of the places `reserve` hands out (taken once the
        batch's leads are locked: see `Outbox`): first, for a lead with an event answered as a
        duplicate, that lead's rows still in the outbox (committed before, perhaps by another replica
        that has not published them: the place's `again` rows), then the rows written. `published`
        are outbox rows published since, deleted here so that the hot path costs one transaction (a
        crash before that delete republishes them, and consumers drop repeats by message id)."""
        places: list[HandOff] = []  # the one `reserve` gave, once taken
        return placed(places, lambda: self._ingest(batch, now, published, reserve, places))

    def _ingest(
        self, batch: Sequence[EventIn], now: datetime, published: Sequence[int],
        reserve: Callable[[], HandOff] | None, places: list[HandOff],
    ) -> tuple[list[EventResult], list[OutboxRow], list[OutboxRow]]:
        results: list[EventResult | None] = [None] * len(batch)
        for i, ev in enumerate(batch):
            problem = event_problem(ev)
            if problem:
                results[i] = EventResult(error_code="invalid", error_message=problem)
        # The hot path: a Core transaction (an ORM session's own cost was a tenth of a small one),
        # prebuilt reads and writes on the driver's cursor (SQLAlchemy's execution of each statement
        # cost more than SQLite's work here), pipelined on PostgreSQL: two round trips, one to read and
        # lock, one to write and commit.
        with self._writes.pipelined() as s:
            if published:
                st.delete_outbox(self._writes, s, published)
            keys = [ev.idempotency_key for i, ev in enumerate(batch) if ev.idempotency_key and results[i] is None]
            seen: dict[str, st.KeyedEvent] = {}
            if keys:
                seen.update(st.events_by_key(self._writes, s, keys))
            lead_ids = sorted({ev.lead_id for i, ev in enumerate(batch) if results[i] is None})
            rows = {r["id"]: st.internal(r) for r in st.leads_for_update(self._writes, s, lead_ids)} if lead_ids else {}
            if reserve is not None:  # the leads are locked now, until the commit
                places.append(reserve())
            touched: set[str] = set()
            event_rows: list[st.SqlRow] = []
            change_rows: list[st.SqlRow] = []
            caused_messages: list[BusMessage] = []
            caused_traces: list[str | None] = []  # the W3C traceparent each message's event came with
            retried: set[str] = set()  # leads of events answered as duplicates
            for i, ev in enumerate(batch):
                if results[i] is not None:
                    continue
                if ev.idempotency_key and ev.idempotency_key in seen:
                    first_id, first_lead, first_type = seen[ev.idempotency_key]
                    if (first_lead, first_type) == (ev.lead_id, ev.type):
                        results[i] = EventResult(event_id=first_id, duplicate=True)
                        retried.add(ev.lead_id)
                    else:  # a reused key: answering "duplicate" would hide that this event was dropped
                        results[i] = EventResult(
                            error_code="idempotency_conflict",
                            # Neither the other event's id nor its lead: the key may be another lead's.
                            error_message="idempotency_key was already used for another event (another "
                                          "lead_id or type); a retry must send the same lead_id and type")
                    continue
                lead = rows.get(ev.lead_id)
                if lead is None:
                    results[i] = EventResult(error_code="unknown_lead", error_message=f"no lead {ev.lead_id}")
                    continue
                event_id = uuid.uuid4().hex
                if ev.idempotency_key:
                    seen[ev.idempotency_key] = st.KeyedEvent(event_id, ev.lead_id, ev.type)
                occurred = ev.occurred_at or now
                outcome = self.model.score_event(lead, {"type": ev.type, "properties": ev.properties,
                                                        "occurred_at": occurred}, now)
                old_score, old_stage, old_segment = lead["score"], lead["lifecycle_stage"], lead["segment"]
                old_consent = dict(lead["consent"] or {})
                apply_outcome(lead, outcome)
                touched.add(ev.lead_id)
                event_rows.append((event_id, ev.lead_id, ev.type, jsoncodec.dumps(ev.properties), occurred, now,
                                   ev.idempotency_key, ev.source or "api", outcome.delta,
                                   jsoncodec.dumps(outcome.signals)))
                running = old_score
                for p in outcome.points:
                    running = bounded_score(running + p.points)
                    change_rows.append((ev.lead_id, occurred, p.points, running, p.rule, p.why, event_id,
                                        self.model.version))
                caused = messages.event_messages(lead, ev, event_id, occurred, outcome, old_score, old_stage,
                                                  old_segment, old_consent)
                caused_messages.extend(caused)
                caused_traces.extend([ev.trace] * len(caused))
                results[i] = EventResult(event_id=event_id)
            # A retry's first attempt may have committed elsewhere (another replica, paused or dying)
            # and not be on the bus yet: the lead's rows still in the outbox go out with this
            # transaction's, ahead of them, so that "duplicate" too is answered only once the event
            # is on the bus, and before any later event of the lead. Consumers drop the repeat when
            # the first replica publishes them too.
            unpublished = st.outbox_of_leads(self._writes, s, sorted(retried)) if retried else []
            if event_rows:
                st.insert_events(self._writes, s, event_rows)
            if change_rows:
                st.insert_score_changes(self._writes, s, change_rows)
            self._save_all(s, [rows[lead_id] for lead_id in sorted(touched)], now)
            written = st.insert_outbox_later(self._writes, s, caused_messages, caused_traces)
        return ([r or EventResult(error_code="internal", error_message="not processed") for r in results],
                unpublished, written())

    def _save_all(self, s: Connection, touched: list[LeadRecord], now: datetime) -> None:
        """One executemany UPDATE for every lead the batch touched, after their consent audit."""
        rows = []
        audits = []
        inactive = timedelta(days=int(self.model.decay["inactive_days"]))
        for lead in touched:
            rows.append(st.scored_lead_row(lead, next_lapse(lead, inactive), now))
            for given in lead.pop("_consent_changes", []):
                audits.append(st.consent_audit_row(lead["id"], now, "event", "email", given))
        if audits:
            st.insert_consent_audits(self._writes, s, audits)
        st.save_scored_leads(self._writes, s, rows)


class IngestQueue:
    """Group commit: concurrent IngestEvents calls are merged into one transaction, which multiplies
    single-event throughput under load. The merged write runs in the trace of the first caller and
    links the others.

    `writers` transactions may be in flight at once. SQLite has one writer anyway: one. On PostgreSQL
    a transaction spends most of its time waiting (its round trips, its commit's WAL flush), so a call
    that arrives meanwhile starts its own at once instead of waiting for that one to finish; their
    outbox rows still reach the bus in commit order per lead (`Outbox.reserve`)."""

    def __init__(self, store: Ingest, clock: Clock, outbox: Outbox, max_events: int = 2000,
                 writers: int = 1) -> None:
        self._store = store
        self._clock = clock
        self._outbox = outbox
        self._max = max_events
        self._writers = max(1, writers)
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: list[_Waiting] = []
        self._wake = asyncio.Event()

    async def submit(self, batch: list[EventIn], wait: float | None = PUBLISH_WAIT_S) -> list[EventResult]:
        """The batch's results, once it is committed and its bus messages are published: the messages
        of its events, and for an event answered as a duplicate, its lead's messages still unpublished
        (`Ingest.ingest`). Across replicas this is what keeps a lead's events on the bus in the order
        they were posted: a caller posts its next event only after this answer, so whichever replica
        takes that one, the earlier one is on the bus already.

        Not published within `wait` seconds (Redis away): `Unconfirmed`. The events are committed and
        go out once Redis is back (the sweep); a retry with the same idempotency key is answered
        "duplicate" once they are out. `wait` None: answered at the commit (the collect stream's
        batches, whose requests were answered already)."""
        future: asyncio.Future[tuple[list[EventResult], asyncio.Future[None]]] = \
            asyncio.get_running_loop().create_future()
        self._pending.append((batch, trace.get_current_span().get_span_context(), future))
        self._wake.set()
        results, announced = await future
        if wait is not None and not announced.done():
            try:
                async with asyncio.timeout(max(0.0, wait)):
                    await asyncio.shield(announced)  # shared by the batch's callers: not cancelled
            except TimeoutError:
                raise Unconfirmed(
                    "the events are stored but could not be announced to the other services in time; "
                    "retry with the same idempotency_key: it is answered as a duplicate once they are",
                    details={"stored": True}) from None
        return results

    async def run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending and self._running < self._writers:
                    taken: list[_Waiting] = []
                    size = 0
                    while self._pending and (not taken or size + len(self._pending[0][0]) <= self._max):
                        item = self._pending.pop(0)
                        taken.append(item)
                        size += len(item[0])
                    self._running += 1
                    task = asyncio.create_task(self._write(taken))
                    self._tasks.add(task)
                    task.add_done_callback(self._written)
        finally:  # stopping: the writes in flight end with it
            for task in self._tasks:
                task.cancel()

    def _written(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._running -= 1
        self._wake.set()  # calls that queued meanwhile go next

    async def _write(self, taken: list[_Waiting]) -> None:
        combined = [ev for batch, _, _ in taken for ev in batch]
        # The first sampled caller's trace, the other sampled callers' and events' own traces linked (an
        # event merged into a call another post started still reaches its SQL); none sampled: nothing
        # is recorded. The events' traces are read lazily: only until MAX_TRACES are found.
        parent, links = batch_parent(itertools.chain((ctx for _, ctx, _ in taken),
                                                     traceparent_contexts(ev.trace for ev in combined)))
        with _tracer.start_as_current_span("ingest", context=parent, links=links) as span:
            if span.is_recording():
                span.set_attributes({"events": len(combined), "calls": len(taken)})
            try:
                # `announced` is resolved once the batch's rows are on the bus (`Outbox`): the callers
                # wait for it.
                (results, _), announced = await self._outbox.commit(
                    functools.partial(self._store.ingest, combined, self._clock.now()), urgent=True)
            except Exception as exc:
                for _, _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
                return
            tag_ids(span, lead_ids=(ev.lead_id for ev in combined),
                    event_ids=(r.event_id for r in results))
        offset = 0
        for batch, _, future in taken:
            if not future.done():
                future.set_result((results[offset:offset + len(batch)], announced))
            offset += len(batch)

