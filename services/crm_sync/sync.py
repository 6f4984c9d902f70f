"""The crm_sync core: inbound CRM calls, the bus consumer that builds the change feed and the push
queue, process automation (assignment, tasks, notifications), and the outbound queue worker.

Order of effects, so nothing is lost or doubled:
- inbound: scoring is called first (its own idempotency: lead upsert by id, events by idempotency key
  derived from the CRM's ids and modification time), then our record is committed; a crash between
  the two makes the CRM's retry a harmless repeat;
- outbound: a push is a row in crm_sync_outbox committed with the change that needs it; the worker
  claims rows (status running), performs them, and records done / retry at a due time / dead with the
  reason. Contact pushes are idempotent (PATCH by id; a create meeting the same email updates it);
  tasks and notes carry `nurture_task_id` and are searched for before a retried create.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import grpc
from sqlalchemy.orm import Session

from nurture import times
from nurture.aio import resolve, wait_event
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.clock import Clock
from nurture.db import Database
from nurture.errors import TRANSIENT
from nurture.rpc import DEADLINE_S
from services.crm_sync import domain
from services.crm_sync import storage as st
from services.crm_sync.connector import Connector, Permanent, Retryable

log = logging.getLogger(__name__)
T = TypeVar("T")

# Lead updates per UpsertLeads call: one scoring transaction each, so small enough that events
# arriving meanwhile wait little for it.
LEAD_UPDATES_PER_CALL = 20


class InputError(ValueError):
    """A malformed request: the caller must fix it (INVALID_ARGUMENT)."""


class UnknownContact(LookupError):
    """A CRM id or lead id this service does not know (NOT_FOUND)."""


class ScoringUnavailable(RuntimeError):
    """Scoring could not take the call now (UNAVAILABLE: the CRM should retry)."""


@dataclass
class ContactIn:
    crm_id: str
    email: str
    first_name: str
    last_name: str
    properties: dict[str, Any]
    modified_at: datetime
    lead_id: str


@dataclass
class ContactWrite:
    """An applied contact, to be recorded: the lead scoring returned and the sync state to keep."""

    crm: str
    c: ContactIn
    lead: dict[str, Any]
    digest: str
    merged: domain.InboundMerge
    status: str
    now: datetime


@dataclass
class Outcome:
    status: str                      # done | retry | dead
    error: str | None = None
    retry_after: float | None = None
    apply: Callable[[Session], None] | None = None


@dataclass
class SyncStats:
    pushes: int = 0
    push_failures: int = 0
    skipped: int = 0
    inbound: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def _micros(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


def crm_lead_id(crm: str, crm_id: str) -> str:
    """The id of a lead born from a CRM contact that has no email (stable across retries)."""
    return "crm_" + hashlib.sha256(f"{crm}:{crm_id}".encode()).hexdigest()[:32]


def lead_from_proto(lead: scoring_pb2.Lead) -> dict[str, Any]:
    def j(text: str) -> Any:
        try:
            return json.loads(text) if text else {}
        except ValueError:
            return {}

    return {"id": lead.id, "email": lead.email or None, "first_name": lead.first_name or None,
            "last_name": lead.last_name or None, "segment": lead.segment or None, "timezone": lead.timezone or None,
            "locale": lead.locale or None, "attributes": j(lead.attributes_json), "consent": j(lead.consent_json),
            "score": lead.score, "grade": lead.grade, "lifecycle_stage": lead.lifecycle_stage,
            "counters": j(lead.counters_json), "crm_id": lead.crm_id or None, "version": lead.version,
            "interests": {}}


class GroupWriter:
    """Group commit: writes submitted while one transaction runs go together into the next, so many
    concurrent inbound calls cost a few SQL commits instead of one each."""

    def __init__(self, db: Database, max_batch: int = 500) -> None:
        self._db = db
        self._queue: list[tuple[Callable[[Session], Any], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._max = max_batch

    async def submit(self, fn: Callable[[Session], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, future))
        self._wake.set()
        return await future

    def _commit(self, batch: list[Callable[[Session], Any]]) -> list[tuple[bool, Any]]:
        try:
            with self._db.session() as s:
                return [(True, fn(s)) for fn in batch]
        except Exception:
            log.debug("group commit failed; committing one by one", exc_info=True)
        out: list[tuple[bool, Any]] = []
        for fn in batch:
            try:
                with self._db.session() as s:
                    out.append((True, fn(s)))
            except Exception as exc:
                out.append((False, exc))
        return out

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                taken, self._queue = self._queue[: self._max], self._queue[self._max:]
                try:
                    results = await self._db.run(self._commit, [fn for fn, _ in taken])
                except Exception as exc:  # the executor itself failed: fail every caller
                    results = [(False, exc)] * len(taken)
                for (_, future), (ok, value) in zip(taken, results, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)


class KeyLocks:
    """One asyncio lock per key while in use (duplicate deliveries of one contact run one at a time)."""

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


ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class Batcher(Generic[ItemT, ResultT]):
    """Items submitted by concurrent callers are handled in batches: while `parallel` batches are
    being handled, new items wait and go together into the next one (no timer: an idle service
    handles a lone item at once)."""

    def __init__(self, handle: Callable[[list[ItemT]], Awaitable[list[ResultT | BaseException]]], *, max_batch: int,
                 parallel: int) -> None:
        self._handle = handle
        self._max = max_batch
        self._parallel = parallel
        self._queue: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, item: ItemT) -> ResultT:
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self._queue and len(self._running) < self._parallel:
            taken, self._queue = self._queue[: self._max], self._queue[self._max:]
            task = asyncio.create_task(self._run(taken))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._start()

    async def _run(self, taken: list[tuple[ItemT, asyncio.Future[ResultT]]]) -> None:
        try:
            results = await self._handle([item for item, _ in taken])
        except BaseException as exc:  # the batch as a whole failed: every caller hears why
            results = [exc] * len(taken)
            if isinstance(exc, asyncio.CancelledError):
                for _, future in taken:
                    future.cancel()
                raise
        resolve((future, res) for (_, future), res in zip(taken, results, strict=True))


class JourneysLookup:
    """Journey participation from journeys' LeadJourneys, with a breaker so a missing or down journeys
    service costs one failed call per 10 s, not one per lead."""

    def __init__(self, channel: grpc.aio.Channel | None) -> None:
        self._stub: Any = None
        self._open_until = 0.0
        if channel is not None:
            try:
                from nurture.api.journeys.v1 import journeys_pb2, journeys_pb2_grpc
            except ImportError:
                return
            self._pb = journeys_pb2
            self._stub = journeys_pb2_grpc.JourneysStub(channel)

    async def many(self, lead_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        if self._stub is None or time.monotonic() < self._open_until or not lead_ids:
            return {}
        sem = asyncio.Semaphore(16)
        out: dict[str, list[dict[str, Any]]] = {}

        async def one(lead_id: str) -> None:
            if time.monotonic() < self._open_until:
                return
            async with sem:
                try:
                    reply = await self._stub.LeadJourneys(self._pb.LeadJourneysRequest(lead_id=lead_id), timeout=1.0)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        self._open_until = time.monotonic() + 10.0
                    return
            out[lead_id] = [{"journey": e.journey, "status": e.status, "stage": e.stage} for e in reply.enrollments]

        await asyncio.gather(*(one(i) for i in lead_ids))
        return out


class CrmSyncCore:
    def __init__(self, *, db: Database, clock: Clock, cfg: domain.SyncConfig, connector: Connector,
                 scoring: scoring_pb2_grpc.ScoringStub, journeys: JourneysLookup, crm_name: str,
                 virtual: bool) -> None:
        self.db = db
        self.clock = clock
        self.cfg = cfg
        self.connector = connector
        self.scoring = scoring
        self.journeys = journeys
        self.crm_name = crm_name
        self.virtual = virtual
        self.writer = GroupWriter(db)
        self.locks = KeyLocks()
        self.contacts: Batcher[tuple[str, ContactIn], dict[str, Any]] = Batcher(
            self._upsert_batch, max_batch=100, parallel=2)
        self.changes_wake = asyncio.Event()
        self.push_wake = asyncio.Event()
        self.stats = SyncStats()
        self._push_lock = asyncio.Lock()
        self._change_waiters: set[asyncio.Event] = set()
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="crm_sync-read")
        self._prefetched: dict[str, dict[str, Any]] = {}

    async def sql(self, fn: Callable[[Session], T]) -> T:
        """A read-write transaction in the database's writer executor."""
        def run() -> T:
            with self.db.session() as s:
                return fn(s)

        return await self.db.run(run)

    async def read(self, fn: Callable[[Session], T]) -> T:
        """A read on its own thread pool: on SQLite (WAL) readers do not queue behind the one writer."""
        def run() -> T:
            with Session(self.db.engine) as s:
                return fn(s)

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    # ------------------------------------------------------------------------------------------------
    # Inbound: contacts

    async def upsert_contacts(self, crm: str, contacts: list[ContactIn]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self.upsert_contact(crm, c) for c in contacts)))

    async def upsert_contact(self, crm: str, c: ContactIn) -> dict[str, Any]:
        # Deliveries that may meet the same lead (same CRM id, email or lead id) run one after the
        # other; everything else joins the next batch. Locks are taken in sorted order (no deadlock).
        keys = sorted({f"{crm}:{kind}:{value}" for kind, value in
                       (("id", c.crm_id), ("email", c.email.lower()), ("lead", c.lead_id)) if value})
        async with contextlib.AsyncExitStack() as stack:
            for key in keys:
                await stack.enter_async_context(self.locks.hold(key))
            return await self.contacts.submit((crm, c))

    async def _upsert_batch(self, items: list[tuple[str, ContactIn]]) -> list[dict[str, Any] | BaseException]:
        """Contacts of concurrent calls together: one read of what we know, one scoring call, one
        group commit. Each contact keeps its own outcome (stale, duplicate, error, ...)."""
        rows = await self.read(lambda s: st.find_leads(
            s, [(crm, c.crm_id or None, c.lead_id or None, c.email or None) for crm, c in items]))
        out: list[dict[str, Any] | BaseException] = [{} for _ in items]
        stale: list[Callable[[Session], None]] = []
        plans: list[tuple[int, str, ContactIn, dict[str, Any] | None, str, domain.InboundMerge]] = []
        requests: list[scoring_pb2.UpsertLeadRequest] = []
        started = self.clock.now()
        for i, ((crm, c), row) in enumerate(zip(items, rows, strict=True)):
            result: dict[str, Any] = {"crm_id": c.crm_id, "lead_id": "", "status": "error", "error_code": "",
                                      "error_message": "", "conflicts": []}
            if (why := domain.ahead_of_clock(self.cfg, "contact.modified_at", c.modified_at, started)) is not None:
                log.warning("CRM %s contact %s refused: %s", crm, c.crm_id or c.email, why)
                out[i] = {**result, "lead_id": row["lead_id"] if row else "", "error_code": "invalid",
                          "error_message": why}
                continue
            digest = hashlib.sha256(json.dumps([c.crm_id, c.email, c.first_name, c.last_name, c.properties],
                                               sort_keys=True, default=str).encode()).hexdigest()[:32]
            if row and row["crm_id"] == c.crm_id and row["contact_modified_at"]:
                if c.modified_at < row["contact_modified_at"]:
                    stale.append(functools.partial(
                        st.add_timeline, lead_id=row["lead_id"], at=self.clock.now(), type_="contact_stale",
                        summary=f"Ignored an out-of-order update of CRM contact {c.crm_id}",
                        details={"crm": crm, "crm_id": c.crm_id, "modified_at": c.modified_at,
                                 "last_seen": row["contact_modified_at"]}))
                    out[i] = {**result, "lead_id": row["lead_id"], "status": "stale"}
                    continue
                if c.modified_at == row["contact_modified_at"] and row["inbound_hash"] == digest:
                    out[i] = {**result, "lead_id": row["lead_id"], "status": "duplicate"}
                    continue
            props = dict(c.properties)
            for name, value in (("email", c.email), ("firstname", c.first_name), ("lastname", c.last_name)):
                if value:
                    props[name] = value
            snapshot = row["snapshot"] if row and row["snapshot"] else None
            merged = domain.merge_inbound(self.cfg, props, c.modified_at, snapshot, row["fields"] if row else {})
            fields = dict(merged.fields)
            if c.crm_id:
                fields["crm_id"] = c.crm_id
            lead_id = row["lead_id"] if row else (c.lead_id or "")
            if not lead_id and not c.email and c.crm_id:
                # Scoring commits before we do: after a crash between the two, the CRM's retry must land
                # on the lead the first try created. With an email scoring matches on it; without one
                # the lead id itself is derived from the CRM's id.
                lead_id = crm_lead_id(crm, c.crm_id)
            out[i] = result
            plans.append((i, crm, c, row, digest, merged))
            requests.append(scoring_pb2.UpsertLeadRequest(id=lead_id, fields_json=json.dumps(fields), merge=True,
                                                          source=f"crm:{crm}"))
        replies = await self._scoring_upserts(requests)
        now = self.clock.now()
        writes: list[tuple[int, ContactWrite]] = []
        for (i, crm, c, row, digest, merged), (lead_pb, created, code, message) in zip(plans, replies, strict=True):
            base = out[i]
            assert isinstance(base, dict)
            if lead_pb is None:
                out[i] = {**base, "error_code": code, "error_message": message}
                continue
            lead = lead_from_proto(lead_pb)
            status = "created" if created else ("updated" if merged.fields or not row else "unchanged")
            writes.append((i, ContactWrite(crm=crm, c=c, lead=lead, digest=digest, merged=merged, status=status,
                                           now=now)))
            out[i] = {**base, "lead_id": lead["id"], "status": status,
                      "conflicts": [x["field"] for x in merged.conflicts if x["winner"] == "platform"]}
        if not writes and not stale:
            return out
        entries = [w for _, w in writes]
        try:
            await self.writer.submit(functools.partial(self._write_contacts, entries=entries, stale=stale))
            self.stats.inbound += len(entries)
        except Exception:
            # The batch's transaction failed: contact by contact, so one bad contact fails alone.
            log.warning("contact batch write failed; writing one by one", exc_info=True)
            done = await asyncio.gather(*(self.writer.submit(functools.partial(
                self._write_contacts, entries=[w], stale=[])) for w in entries), return_exceptions=True)
            for (i, _), res in zip(writes, done, strict=True):
                if isinstance(res, BaseException):
                    out[i] = res
                else:
                    self.stats.inbound += 1
        return out

    def _write_contacts(self, s: Session, *, entries: list[ContactWrite],
                        stale: list[Callable[[Session], None]]) -> None:
        """Record applied contacts in a few statements per batch (not several per contact)."""
        existing = st.get_leads(s, [e.lead["id"] for e in entries])
        recs: dict[str, dict[str, Any]] = {}
        owners: dict[tuple[str, str], str] = {}
        timeline: list[dict[str, Any]] = []
        for e in entries:
            lead_id, c = e.lead["id"], e.c
            rec = recs.get(lead_id) or existing.get(lead_id) or st.new_lead_row(lead_id, e.now)
            if c.crm_id:
                rec["crm"], rec["crm_id"] = e.crm, c.crm_id
                owners[(e.crm, c.crm_id)] = lead_id
            rec["email"] = e.lead["email"] or rec["email"]
            rec["contact_modified_at"], rec["inbound_hash"] = c.modified_at, e.digest
            rec["fields"] = {**rec["fields"], **e.merged.state}
            rec["updated_at"] = e.now
            recs[lead_id] = rec
            timeline.append(st.timeline_row(lead_id, e.now, "contact_upserted",
                                            f"CRM {e.crm} {e.status} contact {c.crm_id or c.email}",
                                            {"crm": e.crm, "crm_id": c.crm_id, "status": e.status,
                                             "applied": e.merged.fields, "modified_at": c.modified_at}))
            for conflict in e.merged.conflicts:
                timeline.append(st.timeline_row(
                    lead_id, e.now, "conflict",
                    f"{conflict['field']}: CRM says {conflict['crm_value']!r}, platform has "
                    f"{conflict['platform_value']!r}; {conflict['winner']} wins ({conflict['policy']})",
                    {"crm": e.crm, "crm_id": c.crm_id, **conflict}))
        # A CRM id that moved to another lead (contacts merged in the CRM) is dropped from the old one,
        # in the database and in this batch, before anything takes it.
        st.unlink_crm_ids(s, owners)
        for lead_id, rec in recs.items():
            if rec["crm_id"] and owners.get((rec["crm"], rec["crm_id"]), lead_id) != lead_id:
                rec["crm_id"] = None
        st.save_leads(s, [r for i, r in recs.items() if i not in existing],
                      [r for i, r in recs.items() if i in existing])
        st.add_timelines(s, timeline)
        for fn in stale:
            fn(s)

    async def _scoring_upserts(self, requests: list[scoring_pb2.UpsertLeadRequest]
                               ) -> list[tuple[scoring_pb2.Lead | None, bool, str, str]]:
        """(lead or None, created, error code, message) per request, from one UpsertLeads call."""
        if not requests:
            return []
        try:
            # One transaction for the batch: its deadline grows with its size (a lone lead: DEADLINE_S).
            reply = await self.scoring.UpsertLeads(scoring_pb2.UpsertLeadsRequest(leads=requests),
                                                   timeout=DEADLINE_S + 0.05 * len(requests))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                code = "invalid" if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else "unavailable"
                return [(None, False, code, exc.details() or exc.code().name)] * len(requests)
            # A scoring from before UpsertLeads (a rolling upgrade): one call per lead.
            return list(await asyncio.gather(*(self._scoring_upsert(r) for r in requests)))
        return [(r.lead, r.created, "", "") if not r.error_code else
                (None, False, "unknown_lead" if r.error_code == "not_found" else r.error_code, r.error_message)
                for r in reply.results]

    async def _scoring_upsert(self, request: scoring_pb2.UpsertLeadRequest
                              ) -> tuple[scoring_pb2.Lead | None, bool, str, str]:
        try:
            reply = await self.scoring.UpsertLead(request, timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            code = "invalid" if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else (
                "unknown_lead" if exc.code() == grpc.StatusCode.NOT_FOUND else "unavailable")
            return None, False, code, exc.details() or exc.code().name
        return reply.lead, reply.created, "", ""

    # ------------------------------------------------------------------------------------------------
    # Inbound: activities and deals

    async def _resolve(self, crm: str, crm_id: str, lead_id: str) -> str:
        row = await self.read(lambda s: st.find_lead(s, crm=crm, crm_id=crm_id or None, lead_id=lead_id or None,
                                                    email=None))
        if row:
            return str(row["lead_id"])
        if lead_id and not crm_id:
            try:
                lead = await self.scoring.GetLead(scoring_pb2.GetLeadRequest(id=lead_id), timeout=DEADLINE_S)
                return str(lead.id)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise ScoringUnavailable(exc.details() or exc.code().name) from exc
        raise UnknownContact(f"unknown CRM contact {crm_id!r}" if crm_id else f"unknown lead {lead_id!r}")

    async def _feed(self, crm: str, kind: str, object_id: str, lead_id: str, modified_at: datetime,
                    state: str, event: scoring_pb2.Event | None, summary: str, details: dict[str, Any]
                    ) -> dict[str, Any]:
        """Common path of activities and deals: staleness by the CRM's modification time, the event to
        scoring (idempotent by key), then our record and the timeline."""
        async with self.locks.hold(f"{crm}:{kind}:{object_id}"):
            seen = await self.read(lambda s: st.get_inbound(s, crm, kind, object_id))
            if seen and modified_at < seen["modified_at"]:
                await self.writer.submit(lambda s: st.add_timeline(
                    s, lead_id, self.clock.now(), f"{kind}_stale", f"Ignored an out-of-order {kind} {object_id}",
                    {"crm": crm, "object_id": object_id, "modified_at": modified_at,
                     "last_seen": seen["modified_at"]}))
                return {"lead_id": lead_id, "status": "stale", "event_id": ""}
            if seen and modified_at == seen["modified_at"]:
                return {"lead_id": lead_id, "status": "duplicate", "event_id": seen["event_id"]}
            if seen and seen["state"] == state:
                event = None  # a later edit that changes nothing the platform acts on: timeline only
            event_id = ""
            if event is not None:
                try:
                    reply = await self.scoring.IngestEvents(scoring_pb2.IngestRequest(events=[event]),
                                                            timeout=DEADLINE_S)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in TRANSIENT:
                        raise ScoringUnavailable(exc.details() or exc.code().name) from exc
                    raise InputError(exc.details() or exc.code().name) from exc
                res = reply.results[0]
                if res.error_code:
                    raise InputError(f"{res.error_code}: {res.error_message}")
                event_id = res.event_id
            now = self.clock.now()

            def write(s: Session) -> None:
                st.put_inbound(s, {"crm": crm, "kind": kind, "object_id": object_id, "lead_id": lead_id,
                                   "modified_at": modified_at, "state": state,
                                   "event_id": event_id or (seen or {}).get("event_id", "")}, exists=seen is not None)
                st.add_timeline(s, lead_id, now, f"{kind}_recorded" if not seen else f"{kind}_updated", summary,
                                {**details, "crm": crm, "event_id": event_id, "modified_at": modified_at})

            await self.writer.submit(write)
            return {"lead_id": lead_id, "status": "recorded" if not seen else "updated", "event_id": event_id}

    async def record_activity(self, crm: str, a: dict[str, Any]) -> dict[str, Any]:
        if not a["activity_id"]:
            raise InputError("activity.activity_id is required")
        if a["kind"] not in self.cfg.activity_kinds:
            raise InputError(f"activity.kind must be one of {', '.join(self.cfg.activity_kinds)}")
        if not (a["crm_id"] or a["lead_id"]):
            raise InputError("activity.crm_id or activity.lead_id is required")
        if a["kind"] == "disqualification" and not a["reason"]:
            raise InputError("activity.reason is required for a disqualification")
        now = self.clock.now()
        modified = a["modified_at"] or a["occurred_at"] or now
        field_name = "activity.modified_at" if a["modified_at"] else "activity.occurred_at (no modified_at)"
        if (why := domain.ahead_of_clock(self.cfg, field_name, modified, now)) is not None:
            raise InputError(why)
        lead_id = await self._resolve(crm, a["crm_id"], a["lead_id"])
        etype = "disqualified" if a["kind"] == "disqualification" else "sales_activity"
        props = {"kind": a["kind"], "outcome": a["outcome"], "reason": a["reason"], "body": a["body"][:2000],
                 "activity_id": a["activity_id"], "crm": crm, **a["properties"]}
        event = scoring_pb2.Event(lead_id=lead_id, type=etype, properties_json=json.dumps(props), source="crm",
                                  idempotency_key=f"crm:{crm}:activity:{a['activity_id']}:{_micros(modified)}")
        if a["occurred_at"]:
            event.occurred_at.FromDatetime(a["occurred_at"])
        return await self._feed(crm, "activity", a["activity_id"], lead_id, modified, etype, event,
                                f"Sales {a['kind']}" + (f": {a['outcome']}" if a["outcome"] else "")
                                + (f" (reason: {a['reason']})" if a["reason"] else ""),
                                {"activity_id": a["activity_id"], "kind": a["kind"], "outcome": a["outcome"],
                                 "reason": a["reason"]})

    async def report_deal(self, crm: str, d: dict[str, Any]) -> dict[str, Any]:
        if not d["deal_id"]:
            raise InputError("deal.deal_id is required")
        if d["stage"] not in self.cfg.deal_stages:
            raise InputError(f"deal.stage must be one of {', '.join(self.cfg.deal_stages)}")
        if not (d["crm_id"] or d["lead_id"]):
            raise InputError("deal.crm_id or deal.lead_id is required")
        if d["modified_at"] is None:
            raise InputError("deal.modified_at is required (the CRM's modification time orders deal updates)")
        if d["amount"] < 0:
            raise InputError("deal.amount must not be negative")
        if (why := domain.ahead_of_clock(self.cfg, "deal.modified_at", d["modified_at"], self.clock.now())) is not None:
            raise InputError(why)
        lead_id = await self._resolve(crm, d["crm_id"], d["lead_id"])
        etype = self.cfg.deal_events.get(d["stage"], "sales_activity")
        props = {"deal_id": d["deal_id"], "stage": d["stage"], "amount": d["amount"], "currency": d["currency"],
                 "reason": d["reason"], "kind": "deal_stage", "crm": crm, **d["properties"]}
        event = scoring_pb2.Event(
            lead_id=lead_id, type=etype, properties_json=json.dumps(props), source="crm",
            idempotency_key=f"crm:{crm}:deal:{d['deal_id']}:{d['stage']}:{_micros(d['modified_at'])}")
        event.occurred_at.FromDatetime(d["modified_at"])
        return await self._feed(crm, "deal", d["deal_id"], lead_id, d["modified_at"], d["stage"], event,
                                f"Deal {d['deal_id']} is {d['stage']}"
                                + (f" ({d['amount']:g} {d['currency']})" if d["amount"] else ""),
                                {"deal_id": d["deal_id"], "stage": d["stage"], "amount": d["amount"],
                                 "reason": d["reason"]})

    # ------------------------------------------------------------------------------------------------
    # Change stream

    async def watch(self, cursor: int, follow: bool, limit: int) -> AsyncIterator[dict[str, Any]]:
        sent = 0
        wake = asyncio.Event()
        self._change_waiters.add(wake)
        try:
            while True:
                wake.clear()
                rows = await self.read(functools.partial(st.changes_after, seq=cursor, limit=500))
                for row in rows:
                    yield row
                    cursor = row["seq"]
                    sent += 1
                    if limit and sent >= limit:
                        return
                if rows:
                    continue
                if not follow:
                    return
                # Woken by this process's bus consumer; the timeout covers other replicas.
                await wait_event(wake, 1.0)
        finally:
            self._change_waiters.discard(wake)

    def _notify_changes(self) -> None:
        for waiter in self._change_waiters:
            waiter.set()

    # ------------------------------------------------------------------------------------------------
    # Bus consumer

    async def handle_messages(self, messages: list[dict[str, Any]]) -> None:
        ids = list(dict.fromkeys(str(m["lead_id"]) for m in messages if m.get("type") != "lead_erased"))
        journeys = await self.journeys.many(ids)
        now = self.clock.now()

        def write(s: Session) -> None:
            # The batch's leads in one query; `rows` then follows this transaction's own changes,
            # which go to SQL together at the end (BatchWrites).
            rows = st.get_leads(s, ids)
            # One pending contact push covers every change of the batch (it reads the latest state).
            queued = st.pending_jobs(s, ids, "contact")
            batch = st.BatchWrites()
            for m in messages:
                self._apply_message(s, m, journeys.get(str(m["lead_id"])), now, rows, queued, batch)
            batch.flush(s)

        await self.sql(write)
        self._notify_changes()
        self.push_wake.set()

    def _apply_message(self, s: Session, m: dict[str, Any], journeys: list[dict[str, Any]] | None,
                       now: datetime, rows: dict[str, dict[str, Any]], queued: set[str],
                       batch: st.BatchWrites) -> None:
        lead_id = str(m["lead_id"])
        if m.get("type") == "lead_erased":
            batch.flush(s)  # what the batch wrote before, in SQL before it is read and erased
            row = st.get_lead(s, lead_id)
            rows.pop(lead_id, None)
            st.erase_lead(s, lead_id)
            if row and row["crm_id"]:
                st.enqueue(s, lead_id, "erase", now, payload={"remote_id": row["crm_id"]})
            st.add_change(s, lead_id, row["crm_id"] if row else None, ["erased"], {}, now)
            return
        lead = m.get("lead")
        if not isinstance(lead, dict):
            return
        current = rows.get(lead_id)
        row = current or st.new_lead_row(lead_id, now)
        occurred = times.parse_utc(m.get("occurred_at")) or now
        # Lead-change messages carry the lead's version (a redelivered older one is dropped); event
        # snapshots carry none and are applied in bus order, which is per-lead order.
        version = lead.get("version")
        dirty = False
        if version is None or int(version) > int(row["version"]):
            source = str((m.get("properties") or {}).get("source") or m.get("source") or "")
            row["fields"] = domain.track_platform_changes(self.cfg, lead, row["fields"], occurred,
                                                          from_crm=source.startswith("crm:"))
            row["snapshot"], dirty = lead, True
            row["version"] = int(version) if version is not None else row["version"]
            row["email"] = lead.get("email") or row["email"]
            if lead.get("lifecycle_stage") == "customer" and not row["converted_at"]:
                row["converted_at"] = occurred
            if lead.get("crm_id") and not row["crm_id"]:
                st.unlink_crm_id(s, self.crm_name, str(lead["crm_id"]), lead_id)
                for other in rows.values():  # the rows of this batch follow the unlink
                    if other["crm_id"] == str(lead["crm_id"]) and other["crm"] == self.crm_name:
                        other["crm_id"] = None
                row["crm"], row["crm_id"] = self.crm_name, str(lead["crm_id"])
        if journeys is not None and journeys != row["journeys"]:
            row["journeys"], dirty = journeys, True
        snapshot = row["snapshot"] or lead
        if dirty:
            proj = domain.projection(snapshot, row["journeys"])
            changed = domain.changed_keys(row["projection"], proj)
            if changed:
                batch.add_change(lead_id, row["crm_id"], changed, proj, occurred)
                row["projection"] = proj
            if lead_id not in queued:  # one pending contact push covers every change of the batch
                batch.enqueue(lead_id, "contact", now)
                queued.add(lead_id)
        signals = [str(x) for x in m.get("signals") or []]
        facts = domain.facts_for(snapshot, signals, {"type": m.get("type"), "properties": m.get("properties") or {}})
        plans = domain.planned_tasks(self.cfg, lead_id, facts, now)
        if plans:
            batch.flush(s)  # tasks read pending jobs and leads' rows from SQL
        for plan in plans:
            self._create_task(s, row, snapshot, plan.dedupe_key, plan.kind, plan.title, plan.priority, plan.due_at,
                              {"why": plan.why, "facts": plan.facts, "bus_message": m.get("id")}, plan.rule, now,
                              facts=facts)
        if plans:  # an assignment may have queued a contact push in SQL: it covers this batch
            queued.update(st.pending_jobs(s, [lead_id], "contact"))
            dirty = True
        if dirty or current is None:
            row["updated_at"] = now
            batch.save_lead(row, exists=current is not None)
            rows[lead_id] = row

    # ------------------------------------------------------------------------------------------------
    # Tasks, notifications, assignment

    def _create_task(self, s: Session, row: dict[str, Any], lead: dict[str, Any], key: str, kind: str, title: str,
                     priority: str, due_at: datetime | None, details: dict[str, Any], rule: str, now: datetime,
                     facts: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], bool]:
        existing = st.get_task_by_key(s, key)
        if existing:
            return existing, True
        lead_id = row["lead_id"]
        hold = domain.task_hold(self.cfg, facts or domain.facts_for(lead, [], None))
        if hold is not None:
            # Closed loop: sales said no. Recorded (a later request under the key is a duplicate),
            # never pushed: the lead is not re-alerted to sales.
            task = {"id": uuid.uuid4().hex, "dedupe_key": key, "lead_id": lead_id, "kind": kind, "title": title,
                    "priority": priority, "owner": row["owner"], "due_at": due_at, "details": details,
                    "document": "", "rule": rule, "status": "held", "remote_id": None, "created_at": now}
            st.insert_task(s, task)
            st.add_timeline(s, lead_id, now, "task_held", f"{title}: not sent to sales, held by rule {hold.rule}: "
                            f"{hold.meta.get('why', '')}",
                            {"task_id": task["id"], "kind": kind, "rule": rule, "hold": hold.rule,
                             "why": hold.meta.get("why", ""), "facts": dict(hold.facts), "dedupe_key": key})
            return task, False
        if kind != "notify":
            # A journey trigger and a crm rule may both ask for the same follow-up (the seed's
            # bottom-funnel alert): the first one today wins, the other is recorded as merged.
            same = st.recent_task(s, lead_id, kind, now - timedelta(hours=24))
            if same:
                # Several bus messages (and a journey's retried request) can ask under one key: the
                # merge is recorded once.
                if st.was_merged(s, lead_id, key):
                    return same, True
                st.add_timeline(s, lead_id, now, "task_merged", f"{title}: merged into today's {kind} task",
                                {"task_id": same["id"], "dedupe_key": key, "rule": rule})
                return same, True
        if not row["owner"]:
            picked = domain.pick_team(self.cfg, domain.facts_for(lead, [], None))
            if picked:
                team, arule = picked
                members = self.cfg.teams[team]
                member = members[st.next_round_robin(s, team, len(members))]
                row["owner"], row["team"], row["meeting_link"] = member.owner, team, member.meeting_link
                st.add_timeline(s, lead_id, now, "assigned", f"Assigned to {member.owner} ({team}, rule {arule})",
                                {"owner": member.owner, "team": team, "rule": arule})
                # The owner and their meeting link go onto the lead, so consultation emails can offer
                # the link (`lead.attributes.meeting_link`) and the CRM sees the owner.
                st.enqueue(s, lead_id, "lead", now, payload={"attributes": {
                    "sales_owner": member.owner, "meeting_link": member.meeting_link}})
                st.enqueue(s, lead_id, "contact", now, coalesce=True)
        document = domain.recommendation_document(lead, row["journeys"], owner=row["owner"],
                                                  meeting_link=row["meeting_link"], task_title=title,
                                                  why=str(details.get("why", "")))
        task = {"id": uuid.uuid4().hex, "dedupe_key": key, "lead_id": lead_id, "kind": kind, "title": title,
                "priority": priority, "owner": row["owner"], "due_at": due_at, "details": details,
                "document": document, "rule": rule, "status": "queued", "remote_id": None, "created_at": now}
        st.insert_task(s, task)
        label = "notification" if kind == "notify" else "task_created"
        st.add_timeline(s, lead_id, now, label, f"{'Notified' if kind == 'notify' else 'Task for'} "
                        f"{row['owner'] or 'unassigned'}: {title}",
                        {"task_id": task["id"], "kind": kind, "priority": priority, "rule": rule,
                         "dedupe_key": key, "due_at": due_at, "why": details.get("why", "")})
        st.enqueue(s, lead_id, "task", now, ref=task["id"])
        return task, False

    async def request_task(self, req: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if not req["dedupe_key"] or not req["lead_id"]:
            raise InputError("dedupe_key and lead_id are required")
        if req["kind"] not in ("sales_alert", "follow_up", "consultation", "notify"):
            raise InputError("kind must be sales_alert, follow_up, consultation or notify")
        if req["priority"] not in ("high", "normal"):
            raise InputError("priority must be high or normal")
        found = await self.read(lambda s: st.get_task_by_key(s, req["dedupe_key"]))
        if found:
            return found, True
        row = await self.read(lambda s: st.get_lead(s, req["lead_id"]))
        lead = row["snapshot"] if row and row["snapshot"] else None
        if lead is None:
            try:
                reply = await self.scoring.GetLead(scoring_pb2.GetLeadRequest(id=req["lead_id"]), timeout=DEADLINE_S)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    raise UnknownContact(f"unknown lead {req['lead_id']!r}") from exc
                raise ScoringUnavailable(exc.details() or exc.code().name) from exc
            lead = lead_from_proto(reply)
        now = self.clock.now()
        snapshot = lead

        def write(s: Session) -> tuple[dict[str, Any], bool]:
            current = st.get_lead(s, req["lead_id"])
            rec = current or st.new_lead_row(req["lead_id"], now)
            if current is None:
                rec["email"] = snapshot.get("email")
            task, dup = self._create_task(s, rec, snapshot, req["dedupe_key"], req["kind"],
                                          req["title"] or req["kind"].replace("_", " "), req["priority"],
                                          req["due_at"], {**req["details"], "why": req["details"].get(
                                              "why", f"requested by {req['source']}")}, f"request:{req['source']}",
                                          now)
            st.save_lead(s, rec, exists=current is not None)
            return task, dup

        result = await self.writer.submit(write)
        self.push_wake.set()
        return result

    # ------------------------------------------------------------------------------------------------
    # Outbound queue

    async def process_due(self, limit: int = 400) -> int:
        """Claim and perform every push due now (up to `limit`); returns how many were tried."""
        async with self._push_lock:
            now = self.clock.now()

            def claim(s: Session) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
                jobs = st.due_jobs(s, now, limit)
                st.mark_running(s, [j["id"] for j in jobs])
                # Contact pushes read their lead's state now, in the same round trip.
                return jobs, st.get_leads(s, [j["lead_id"] for j in jobs if j["op"] == "contact"])

            jobs, prefetched = await self.sql(claim)
            self._prefetched = prefetched
            if not jobs:
                return 0
            by_lead: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for j in jobs:
                if j["op"] != "lead":
                    by_lead[j["lead_id"]].append(j)
            # Write-backs to scoring (CRM ids, sales owners) go together: one UpsertLeads per chunk,
            # where one UpsertLead each had scoring commit 30 transactions at once, ahead of ingest.
            lead_jobs = [j for j in jobs if j["op"] == "lead"]
            results: list[tuple[dict[str, Any], Outcome]] = list(
                zip(lead_jobs, await self._update_leads(lead_jobs), strict=True))
            sem = asyncio.Semaphore(32)

            async def lane(items: list[dict[str, Any]]) -> None:
                async with sem:
                    # The CRM id a contact push of this lane got, before it is recorded: a task right
                    # behind it attaches to that contact instead of creating the contact again.
                    remote: dict[str, str] = {}
                    pushed = False
                    for j in items:  # one lead's pushes in order
                        if j["op"] == "contact" and pushed:
                            # Two contact pushes claimed together (one left over from a crash): the
                            # first read the state both were queued for, so it covered this one too.
                            results.append((j, Outcome("done")))
                            continue
                        out = await self._perform(j, remote)
                        pushed = pushed or (j["op"] == "contact" and out.status == "done")
                        results.append((j, out))

            await asyncio.gather(*(lane(items) for items in by_lead.values()))
            done_at = self.clock.now()

            def record(s: Session) -> None:
                finished: list[dict[str, Any]] = []
                for job, out in results:
                    self._record(s, job, out, done_at, finished)
                st.finish_jobs(s, finished)  # one executemany, not a round trip per push

            await self.sql(record)
            return len(jobs)

    def _record(self, s: Session, job: dict[str, Any], out: Outcome, now: datetime,
                finished: list[dict[str, Any]]) -> None:
        """Record a push's outcome; the job's own row update is added to `finished` (written together)."""
        attempts = int(job["attempts"]) + 1
        if out.status == "done":
            if out.apply is not None:
                out.apply(s)
            finished.append(st.finished_job(job["id"], status="done", attempts=attempts, due_at=job["due_at"],
                                            error=None, now=now))
            return
        if out.status == "retry" and attempts < domain.MAX_ATTEMPTS:
            delay = domain.retry_delay(int(job["id"]), attempts, out.retry_after)
            due = now + timedelta(seconds=delay)
            finished.append(st.finished_job(job["id"], status="pending", attempts=attempts, due_at=due,
                                            error=out.error, now=now))
            st.add_timeline(s, job["lead_id"], now, "push_retry",
                            f"CRM push ({job['op']}) failed, retry {attempts + 1} at {due.isoformat()}: {out.error}",
                            {"job": job["id"], "op": job["op"], "attempt": attempts, "error": out.error,
                             "retry_after": out.retry_after, "due_at": due})
            return
        reason = out.error if out.status == "dead" else f"gave up after {attempts} tries: {out.error}"
        finished.append(st.finished_job(job["id"], status="dead", attempts=attempts, due_at=job["due_at"],
                                        error=reason, now=now))
        if job["op"] == "task":
            st.update_task(s, job["ref"], status="dead")
        st.add_timeline(s, job["lead_id"], now, "push_dead", f"CRM push ({job['op']}) dead-lettered: {reason}",
                        {"job": job["id"], "op": job["op"], "attempts": attempts, "reason": reason})

    async def _update_leads(self, jobs: list[dict[str, Any]]) -> list[Outcome]:
        """Apply `lead` pushes (field updates of scoring's lead) in order, LEAD_UPDATES_PER_CALL per
        UpsertLeads call, so each of scoring's transactions stays short."""
        outcomes: list[Outcome] = []
        for start in range(0, len(jobs), LEAD_UPDATES_PER_CALL):
            chunk = jobs[start:start + LEAD_UPDATES_PER_CALL]
            request = scoring_pb2.UpsertLeadsRequest(leads=[scoring_pb2.UpsertLeadRequest(
                id=j["lead_id"], fields_json=json.dumps(j["payload"]), merge=True, source="crm_sync",
                must_exist=True) for j in chunk])
            try:
                reply = await self.scoring.UpsertLeads(request, timeout=DEADLINE_S + 0.05 * len(chunk))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # a scoring from before UpsertLeads
                    outcomes += [await self._perform(j, {}) for j in chunk]
                    continue
                error = f"scoring {exc.code().name}: {exc.details()}"
                outcomes += [Outcome("retry" if exc.code() in TRANSIENT else "dead", error=error)] * len(chunk)
                continue
            if len(reply.results) != len(chunk):  # not what the contract says: try these again later
                outcomes += [Outcome("retry", error="scoring answered the wrong number of results")] * len(chunk)
                continue
            for r in reply.results:
                if not r.error_code or r.error_code == "not_found":  # not found: erased, nothing to update
                    outcomes.append(Outcome("done"))
                else:
                    self.stats.push_failures += 1
                    outcomes.append(Outcome("dead" if r.error_code in ("invalid", "email_taken") else "retry",
                                            error=f"scoring {r.error_code}: {r.error_message}"))
        return outcomes

    async def _perform(self, job: dict[str, Any], remote: dict[str, str]) -> Outcome:
        try:
            if job["op"] == "contact":
                return Outcome("done", apply=await self._push_contact(
                    job["lead_id"], self._prefetched.pop(job["lead_id"], None), remote=remote))
            if job["op"] == "task":
                return Outcome("done", apply=await self._push_task(job, remote))
            if job["op"] == "lead":
                await self.scoring.UpsertLead(scoring_pb2.UpsertLeadRequest(
                    id=job["lead_id"], fields_json=json.dumps(job["payload"]), merge=True, source="crm_sync",
                    must_exist=True), timeout=DEADLINE_S)
                return Outcome("done")
            if job["op"] == "erase":
                await self.connector.archive_contact(str(job["payload"]["remote_id"]))
                return Outcome("done")
            return Outcome("dead", error=f"unknown push kind {job['op']}")
        except Retryable as exc:
            self.stats.push_failures += 1
            return Outcome("retry", error=exc.reason, retry_after=exc.retry_after)
        except Permanent as exc:
            self.stats.push_failures += 1
            return Outcome("dead", error=exc.reason)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in TRANSIENT:
                return Outcome("retry", error=f"scoring {exc.code().name}: {exc.details()}")
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return Outcome("done")  # the lead is gone (erased): nothing left to update
            return Outcome("dead", error=f"scoring {exc.code().name}: {exc.details()}")
        except Exception as exc:  # a bug or an unexpected answer: keep the push, retry with backoff
            log.exception("push %s failed unexpectedly", job["id"])
            return Outcome("retry", error=f"{type(exc).__name__}: {exc}")

    async def _push_contact(self, lead_id: str, row: dict[str, Any] | None = None, *,
                            remote: dict[str, str] | None = None) -> Callable[[Session], None] | None:
        if row is None:
            row = await self.read(lambda s: st.get_lead(s, lead_id))
        if row is None or not row["snapshot"]:
            return None
        computed = domain.computed_values(self.cfg, row["snapshot"], row["journeys"], owner=row["owner"],
                                          converted_at=row["converted_at"])
        props = domain.outbound_properties(self.cfg, row["snapshot"], row["fields"], computed,
                                           contact_exists=bool(row["crm_id"]))
        # A created contact carries the lead id, so a create whose answer was lost can be found again.
        full = {**domain.outbound_properties(self.cfg, row["snapshot"], row["fields"], computed,
                                             contact_exists=False), "nurture_lead_id": lead_id}
        digest = domain.props_hash(props)
        if digest == row["pushed_hash"] and row["crm_id"]:
            self.stats.skipped += 1
            return None
        remote_id = await self.connector.upsert_contact(row["crm_id"], props, full)
        if remote is not None:
            remote[lead_id] = remote_id
        if remote_id != row["crm_id"]:
            props = full
        self.stats.pushes += 1
        pushed_fields = {r.lead: props[r.crm] for r in self.cfg.fields
                         if r.crm in props and r.policy in domain.INBOUND_POLICIES}

        def apply(s: Session) -> None:
            now = self.clock.now()
            rec = st.get_lead(s, lead_id)
            if rec is None:
                return
            if rec["crm_id"] != remote_id:
                st.unlink_crm_id(s, self.crm_name, remote_id, lead_id)
                if not rec["crm_id"]:
                    st.enqueue(s, lead_id, "lead", now, payload={"crm_id": remote_id})
                rec["crm"], rec["crm_id"] = self.crm_name, remote_id
            rec["pushed_hash"] = digest
            for name, value in pushed_fields.items():
                fs = rec["fields"].setdefault(name, {})
                fs["crm_value"], fs["crm_at"] = value, now.isoformat()
            st.save_lead(s, rec, exists=True)
            st.add_timeline(s, lead_id, now, "contact_pushed",
                            f"Pushed {len(props)} properties to CRM contact {remote_id}",
                            {"crm_id": remote_id, "properties": sorted(props)})

        return apply

    async def _push_task(self, job: dict[str, Any], remote_ids: dict[str, str]
                         ) -> Callable[[Session], None] | None:
        task = await self.read(lambda s: st.get_task(s, job["ref"]))
        if task is None:
            return None
        row = await self.read(lambda s: st.get_lead(s, task["lead_id"]))
        if row is None:
            return None
        contact = row["crm_id"] or remote_ids.get(task["lead_id"])
        if not contact:
            # The contact must exist before a task can be attached to it.
            first = await self._push_contact(task["lead_id"], remote=remote_ids)
            if first is not None:
                await self.sql(first)
            row = await self.read(lambda s: st.get_lead(s, task["lead_id"]))
            contact = row["crm_id"] if row else None
            if not contact:
                raise Retryable("contact not in the CRM yet")
        props = {
            "hs_task_subject": task["title"][:250],
            "hs_task_body": f"{task['details'].get('why', '')} (kind {task['kind']}, rule {task['rule']})",
            "hs_task_priority": "HIGH" if task["priority"] == "high" else "MEDIUM",
            "hs_task_status": "NOT_STARTED",
            "hs_task_type": "CALL" if task["kind"] in ("sales_alert", "consultation") else "TODO",
            "hs_timestamp": (task["due_at"] or self.clock.now()).isoformat(),
            "hubspot_owner_id": task["owner"] or "",
            "nurture_task_id": task["id"],
            "nurture_kind": task["kind"],
        }
        remote = None
        if int(job["attempts"]) > 0 or task["remote_id"]:
            remote = task["remote_id"] or await self.connector.find("tasks", "nurture_task_id", task["id"])
        if remote is None:
            remote = await self.connector.create_task(contact, props)
        note = None
        if task["document"]:
            if int(job["attempts"]) > 0:
                note = await self.connector.find("notes", "nurture_task_id", task["id"])
            if note is None:
                note = await self.connector.create_note(contact, remote, {
                    "hs_note_body": task["document"], "hs_timestamp": self.clock.now().isoformat(),
                    "nurture_task_id": task["id"]})
        self.stats.pushes += 1

        def apply(s: Session) -> None:
            st.update_task(s, task["id"], status="pushed", remote_id=remote)
            st.add_timeline(s, task["lead_id"], self.clock.now(), "task_pushed",
                            f"{'Notification' if task['kind'] == 'notify' else 'Task'} {remote} created in the CRM "
                            f"for {task['owner'] or 'unassigned'}",
                            {"task_id": task["id"], "remote_id": remote, "note_id": note, "contact": contact})

        return apply

    async def settle(self, drain: Callable[[], Awaitable[int]]) -> tuple[int, datetime | None]:
        done = await drain()
        while True:
            n = await self.process_due()
            done += n
            if n == 0:
                break
        return done, await self.sql(st.next_due)

    async def push_loop(self) -> None:
        """Real clock only: perform pushes as they fall due (woken at once when new ones are queued)."""
        while True:
            try:
                if await self.process_due():
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("push loop failed; retrying")
            self.push_wake.clear()
            await wait_event(self.push_wake, 0.1)

    async def recover(self) -> None:
        """After a crash, pushes that were in flight run again; their attempt counts as made, so a
        task that may have been created is searched for before it is created again."""
        def reset(s: Session) -> None:
            from sqlalchemy import update

            from services.crm_sync.tables import outbox
            s.execute(update(outbox).where(outbox.c.status == "running")
                      .values(status="pending", attempts=outbox.c.attempts + 1))

        await self.sql(reset)

    # ------------------------------------------------------------------------------------------------
    # Admin

    def close(self) -> None:
        self._readers.shutdown(wait=True)

    async def timeline(self, lead_id: str, limit: int) -> list[dict[str, Any]]:
        return await self.read(lambda s: st.get_timeline(s, lead_id, limit))

    async def erase(self, lead_id: str) -> int:
        now = self.clock.now()

        def run(s: Session) -> int:
            row = st.get_lead(s, lead_id)
            removed = st.erase_lead(s, lead_id)
            if row and row["crm_id"]:
                st.enqueue(s, lead_id, "erase", now, payload={"remote_id": row["crm_id"]})
            return removed

        removed = await self.sql(run)
        self.push_wake.set()
        return removed


