"""The outbound queue: claim due pushes, perform them against the CRM and scoring, record outcomes."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from sqlalchemy.orm import Session

from nurture import telemetry
from nurture.aio import wait_event
from nurture.api.scoring.v1 import scoring_pb2
from nurture.db import ContentionError
from nurture.errors import TRANSIENT
from nurture.rpc import DEADLINE_S
from services.crm_sync import domain
from services.crm_sync import storage as st
from services.crm_sync.app.base import CoreBase
from services.crm_sync.connector import BATCH_UPDATE, Permanent, Retryable

log = logging.getLogger(__name__)
_tracer = telemetry.tracer(__name__)


# Lead updates per UpsertLeads call: one scoring transaction each, so small enough that events
# arriving meanwhile wait little for it.
LEAD_UPDATES_PER_CALL = 20
# Pushes claimed per pass, and how long the push loop waits after a pass that took fewer (a trickle,
# not a backlog) before claiming again. Each pass costs a claim and a record transaction and a read of
# its leads whatever its size: under a stream of single-contact calls the passes took ~30 pushes each;
# a short wait makes them take a few hundred (bench/crm.py). A push is the CRM's copy catching up, never
# what a caller waits on, so a fraction of a second more is not felt.
PUSH_PASS = 400
PUSH_LINGER_S = 0.2


@dataclass(frozen=True)
class ContactPushed:
    """A contact push the CRM took, to record on the lead: its CRM id, the hash of what was pushed,
    the CRM's values of the inbound fields, and the pushed properties' names (its timeline line)."""

    lead_id: str
    remote_id: str
    digest: str
    pushed_fields: dict[str, str]
    properties: list[str]


@dataclass(frozen=True)
class _ContactProps:
    """A contact push about to be made: the lead's row, its computed values, the properties for a
    contact the CRM has, and their hash."""

    lead_id: str
    row: st.LeadRecord
    computed: dict[str, str]
    props: dict[str, str]
    digest: str


@dataclass
class Outcome:
    status: str                      # done | retry | dead
    error: str | None = None
    retry_after: float | None = None
    apply: Callable[[Session], None] | None = None
    contact: ContactPushed | None = None


class ContactRecords:
    """The contact pushes of one pass recorded in one transaction: the leads' push state read (and
    locked, in key order) at once, changed in memory in the pushes' order, written back with one
    executemany and their timeline lines with another (a read, an update and an insert per push cost
    more than the push itself on PostgreSQL). Only the columns a push changes are read and written
    (`st.PushState`): the whole row's JSON, decoded and encoded again, was most of a record's cost."""

    def __init__(self, s: Session, crm: str, pushes: list[ContactPushed]) -> None:
        self._s, self._crm = s, crm
        self._rows = st.get_push_states(s, [p.lead_id for p in pushes]) if pushes else {}
        self._changed: dict[str, st.PushState] = {}
        self._timeline: list[st.TimelineEntry] = []

    def record(self, p: ContactPushed, now: datetime) -> ContactRecords:
        rec = self._rows.get(p.lead_id)
        if rec is None:  # erased since the push
            return self
        if rec.crm_id != p.remote_id:
            st.unlink_crm_id(self._s, self._crm, p.remote_id, p.lead_id)
            for other in self._rows.values():  # the rows held here follow the unlink
                if other is not rec and other.crm == self._crm and other.crm_id == p.remote_id:
                    other.crm_id = None
                    self._changed.setdefault(other.lead_id, other)
            if not rec.crm_id:
                st.enqueue(self._s, p.lead_id, "lead", now, payload={"crm_id": p.remote_id})
            rec.crm, rec.crm_id = self._crm, p.remote_id
        rec.pushed_hash = p.digest
        if p.pushed_fields:
            fields = rec.fields
            for name, value in p.pushed_fields.items():
                fs = fields.setdefault(name, {})
                fs["crm_value"], fs["crm_at"] = value, now.isoformat()
        self._changed[p.lead_id] = rec
        # The line's id is taken now: the timeline keeps the order of the pass's outcomes.
        self._timeline.append(st.timeline_row(p.lead_id, now, "contact_pushed",
                                              f"Pushed {len(p.properties)} properties to CRM contact {p.remote_id}",
                                              {"crm_id": p.remote_id, "properties": p.properties}))
        return self

    def flush(self) -> None:
        st.save_push_states(self._s, list(self._changed.values()))
        st.add_timelines(self._s, self._timeline)
        self._changed, self._timeline = {}, []


class OutboundQueue(CoreBase):
    _push_lock: asyncio.Lock
    _prefetched: dict[str, st.LeadRecord]
    _reclaimed_at: float

    async def process_due(self, limit: int = PUSH_PASS) -> int:
        """Perform the pushes due now, in passes of up to `limit`, until a pass takes fewer (no backlog
        left); returns how many were tried. A full pass means more are waiting: the next pass is
        claimed in the transaction that records this one, one transaction a pass instead of two."""
        async with self._push_lock:
            now = self.clock.now()
            # About once a minute, claims whose lease ran out (their replica died) return to the queue;
            # not on every poll, which would make each idle poll a write.
            reclaim = time.monotonic() - self._reclaimed_at > 60
            if reclaim:
                self._reclaimed_at = time.monotonic()

            def claim(s: Session) -> list[st.PushJob]:
                if reclaim:
                    st.requeue_running(s, self.replica, now)
                return self._claim(s, now, limit)

            jobs = await self.sql(claim)
            tried = 0
            while jobs:
                tried += len(jobs)
                # A pass is a trace of its own (a Settle's child with a virtual clock): its CRM calls,
                # scoring write-backs and the record of their outcomes. Only a pass with work: an idle
                # poll, ten a second, records nothing.
                with _tracer.start_as_current_span("crm push", attributes={"pushes": len(jobs)}) as span:
                    telemetry.tag_ids(span, lead_ids=(j.lead_id for j in jobs))
                    results = await self._perform_pass(jobs)
                    jobs = await self._record_pass(results, claim_next=limit if len(jobs) >= limit else 0)
            return tried

    def _claim(self, s: Session, now: datetime, limit: int) -> list[st.PushJob]:
        """Take up to `limit` due pushes (another replica's claims skipped, see `st.due_jobs`)."""
        jobs = st.due_jobs(s, now, limit)
        st.mark_running(s, [j.id for j in jobs], self.replica, now)
        return jobs

    async def _perform_pass(self, jobs: list[st.PushJob]) -> list[tuple[st.PushJob, Outcome]]:
        """Perform a claimed pass: lead updates together, each lead's other pushes in order, leads side
        by side. Returns each job with its outcome, to record."""
        # Contact pushes read their leads' state on the reader threads, after the claim committed: the
        # writer (on SQLite one thread, which the bus consumer's transaction waits for) is not held by
        # a read, and the state read is the latest.
        contact_leads = [j.lead_id for j in jobs if j.op == "contact"]
        self._prefetched = await self.read(lambda s: st.get_leads(s, contact_leads)) if contact_leads else {}
        by_lead: dict[str, list[st.PushJob]] = defaultdict(list)
        for j in jobs:
            if j.op != "lead":
                by_lead[j.lead_id].append(j)
        # Write-backs to scoring (CRM ids, sales owners) go together: one UpsertLeads per chunk,
        # where one UpsertLead each had scoring commit 30 transactions at once, ahead of ingest.
        lead_jobs = [j for j in jobs if j.op == "lead"]
        results: list[tuple[st.PushJob, Outcome]] = list(
            zip(lead_jobs, await self._update_leads(lead_jobs), strict=True))
        # Contact pushes first in their lead's lane go to the CRM together, before the lanes start.
        together = await self._push_known_contacts(
            [items[0] for items in by_lead.values() if items[0].op == "contact"])
        sem = asyncio.Semaphore(32)

        async def lane(items: list[st.PushJob]) -> None:
            async with sem:
                # The CRM id a contact push of this lane got, before it is recorded: a task right
                # behind it attaches to that contact instead of creating the contact again.
                remote: dict[str, str] = {}
                pushed = False
                for j in items:  # one lead's pushes in order
                    if j.op == "contact" and pushed:
                        # Two contact pushes claimed together (one left over from a crash): the
                        # first read the state both were queued for, so it covered this one too.
                        results.append((j, Outcome("done")))
                        continue
                    out = together.pop(int(j.id), None) or await self._perform(j, remote)
                    if out.contact is not None:
                        remote[j.lead_id] = out.contact.remote_id
                    pushed = pushed or (j.op == "contact" and out.status == "done")
                    results.append((j, out))

        await asyncio.gather(*(lane(items) for items in by_lead.values()))
        self._prefetched = {}
        return results

    async def _record_pass(self, results: list[tuple[st.PushJob, Outcome]], *, claim_next: int
                           ) -> list[st.PushJob]:
        """Record a pass's outcomes in one transaction and, with `claim_next`, claim up to that many
        due pushes in it too (returned)."""
        done_at = self.clock.now()

        def record(s: Session) -> list[st.PushJob]:
            finished: list[st.FinishedJob] = []
            contacts = self._contact_records(s, [out.contact for _, out in results if out.contact])
            for job, out in results:
                self._record(s, job, out, done_at, finished, contacts)
            contacts.flush()
            st.finish_jobs(s, finished)  # one executemany, not a round trip per push
            return self._claim(s, done_at, claim_next) if claim_next else []

        for attempt in itertools.count(1):
            try:
                return await self.sql(record)
            except ContentionError:
                # The pushes were made: their outcomes must be recorded, or their jobs stay
                # claimed until a restart. A lead row held longer than the lock timeout (a large
                # bus batch on a starved machine) is waited for again.
                await asyncio.sleep(min(5.0, 0.2 * attempt))
        raise AssertionError("unreachable")

    def _contact_records(self, s: Session, pushes: list[ContactPushed]) -> ContactRecords:
        return ContactRecords(s, self.crm_name, pushes)

    def _record(self, s: Session, job: st.PushJob, out: Outcome, now: datetime,
                finished: list[st.FinishedJob], contacts: ContactRecords) -> None:
        """Record a push's outcome; the job's own row update is added to `finished` (written together)."""
        attempts = int(job.attempts) + 1
        if out.status == "done":
            if out.contact is not None:
                contacts.record(out.contact, now)
            if out.apply is not None:
                out.apply(s)
            finished.append(st.FinishedJob(job.id, "done", attempts, job.due_at, None, now))
            return
        if out.status == "retry" and attempts < domain.MAX_ATTEMPTS:
            delay = domain.retry_delay(int(job.id), attempts, out.retry_after)
            due = now + timedelta(seconds=delay)
            finished.append(st.FinishedJob(job.id, "pending", attempts, due, out.error, now))
            st.add_timeline(s, job.lead_id, now, "push_retry",
                            f"CRM push ({job.op}) failed, retry {attempts + 1} at {due.isoformat()}: {out.error}",
                            {"job": job.id, "op": job.op, "attempt": attempts, "error": out.error,
                             "retry_after": out.retry_after, "due_at": due})
            return
        reason = out.error if out.status == "dead" else f"gave up after {attempts} tries: {out.error}"
        finished.append(st.FinishedJob(job.id, "dead", attempts, job.due_at, reason, now))
        if job.op == "task":
            st.update_task(s, job.ref, status="dead")
        st.add_timeline(s, job.lead_id, now, "push_dead", f"CRM push ({job.op}) dead-lettered: {reason}",
                        {"job": job.id, "op": job.op, "attempts": attempts, "reason": reason})

    async def _update_leads(self, jobs: list[st.PushJob]) -> list[Outcome]:
        """Apply `lead` pushes (field updates of scoring's lead) in order, LEAD_UPDATES_PER_CALL per
        UpsertLeads call, so each of scoring's transactions stays short."""
        outcomes: list[Outcome] = []
        for start in range(0, len(jobs), LEAD_UPDATES_PER_CALL):
            chunk = jobs[start:start + LEAD_UPDATES_PER_CALL]
            request = scoring_pb2.UpsertLeadsRequest(leads=[scoring_pb2.UpsertLeadRequest(
                id=j.lead_id, fields_json=json.dumps(j.payload), merge=True, source="crm_sync",
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

    async def _perform(self, job: st.PushJob, remote: dict[str, str]) -> Outcome:
        try:
            if job.op == "contact":
                return Outcome("done", contact=await self._push_contact(
                    job.lead_id, self._prefetched.pop(job.lead_id, None), remote=remote))
            if job.op == "task":
                return Outcome("done", apply=await self._push_task(job, remote))
            if job.op == "lead":
                await self.scoring.UpsertLead(scoring_pb2.UpsertLeadRequest(
                    id=job.lead_id, fields_json=json.dumps(job.payload), merge=True, source="crm_sync",
                    must_exist=True), timeout=DEADLINE_S)
                return Outcome("done")
            if job.op == "deal":
                await self.connector.update_deal(str(job.payload["deal_id"]),
                                                 {k: str(v) for k, v in job.payload["properties"].items()})
                return Outcome("done", apply=self._deal_linked(job))
            if job.op == "erase":
                await self.connector.archive_contact(str(job.payload["remote_id"]))
                return Outcome("done")
            return Outcome("dead", error=f"unknown push kind {job.op}")
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
            log.exception("push %s failed unexpectedly", job.id)
            return Outcome("retry", error=f"{type(exc).__name__}: {exc}")

    def _contact_props(self, lead_id: str, row: st.LeadRecord | None) -> _ContactProps | None:
        """What a contact push would send for the lead: None when there is nothing (no lead, no
        snapshot yet, or the CRM has what it would send already)."""
        if row is None or not row.snapshot:
            return None
        computed = domain.computed_values(self.cfg, row.snapshot, row.journeys, owner=row.owner,
                                          converted_at=row.converted_at)
        props = domain.outbound_properties(self.cfg, row.snapshot, row.fields, computed,
                                           contact_exists=bool(row.crm_id))
        digest = domain.props_hash(props)
        if digest == row.pushed_hash and row.crm_id:
            self.stats.skipped += 1
            return None
        return _ContactProps(lead_id, row, computed, props, digest)

    def _pushed(self, p: _ContactProps, remote_id: str, props: dict[str, str]) -> ContactPushed:
        self.stats.pushes += 1
        pushed_fields = {r.lead: props[r.crm] for r in self.cfg.fields
                         if r.crm in props and r.policy in domain.INBOUND_POLICIES}
        return ContactPushed(lead_id=p.lead_id, remote_id=remote_id, digest=p.digest, pushed_fields=pushed_fields,
                             properties=sorted(props))

    async def _push_contact(self, lead_id: str, row: st.LeadRecord | None = None, *,
                            remote: dict[str, str] | None = None) -> ContactPushed | None:
        if row is None:
            row = await self.read(lambda s: st.get_lead(s, lead_id))
        p = self._contact_props(lead_id, row)
        if p is None:
            return None
        row, props = p.row, p.props
        # A created contact carries the lead id, so a create whose answer was lost can be found again.
        # (Made only for a push that happens: a push skipped above needs it not.)
        full = {**domain.outbound_properties(self.cfg, row.snapshot, row.fields, p.computed,
                                             contact_exists=False), "nurture_lead_id": lead_id}
        remote_id = await self.connector.upsert_contact(row.crm_id, props, full)
        if remote is not None:
            remote[lead_id] = remote_id
        return self._pushed(p, remote_id, full if remote_id != row.crm_id else props)

    async def _push_known_contacts(self, jobs: list[st.PushJob]) -> dict[int, Outcome]:
        """The contact pushes of a pass whose contacts the CRM knows (a CRM id on the lead), as
        batch updates of up to BATCH_UPDATE: their outcomes by job id. Each is the first push of its
        lead in the pass (so the lead's pushes keep their order). What a batch leaves out (a contact
        the CRM did not answer for, a batch it refused as a whole) is not here: its lane pushes it
        alone, as before, where a contact deleted in the CRM is created again."""
        known: dict[str, tuple[st.PushJob, _ContactProps]] = {}  # by CRM id: one update per contact
        outcomes: dict[int, Outcome] = {}
        for j in jobs:
            row = self._prefetched.get(j.lead_id)
            if row is None or not row.crm_id or row.crm_id in known:
                continue
            p = self._contact_props(j.lead_id, row)
            if p is None:  # nothing new for the CRM
                self._prefetched.pop(j.lead_id, None)
                outcomes[int(j.id)] = Outcome("done")
                continue
            known[row.crm_id] = (j, p)
        if len(known) < 2:  # a lone push goes as a PATCH of its own (its lane's): a batch of one saves nothing
            return outcomes
        chunks = [list(known.items())[i:i + BATCH_UPDATE] for i in range(0, len(known), BATCH_UPDATE)]

        async def send(chunk: list[tuple[str, tuple[st.PushJob, _ContactProps]]]) -> None:
            try:
                updated = await self.connector.update_contacts({crm_id: p.props for crm_id, (_, p) in chunk})
            except Retryable as exc:
                self.stats.push_failures += len(chunk)
                for _, (j, _p) in chunk:
                    self._prefetched.pop(j.lead_id, None)
                    outcomes[int(j.id)] = Outcome("retry", error=exc.reason, retry_after=exc.retry_after)
                return
            except Permanent:
                log.info("CRM refused a batch of %d contact updates; pushing them one by one", len(chunk))
                return
            except Exception:  # an unexpected answer: the lanes push them one by one (each PATCH is a repeat at worst)
                log.exception("a batch of %d contact updates failed unexpectedly", len(chunk))
                return
            for crm_id, (j, p) in chunk:
                if crm_id in updated:
                    self._prefetched.pop(j.lead_id, None)
                    outcomes[int(j.id)] = Outcome("done", contact=self._pushed(p, crm_id, p.props))

        await asyncio.gather(*(send(c) for c in chunks))
        return outcomes

    async def _push_task(self, job: st.PushJob, remote_ids: dict[str, str]
                         ) -> Callable[[Session], None] | None:
        task = await self.read(lambda s: st.get_task(s, job.ref))
        if task is None:
            return None
        row = await self.read(lambda s: st.get_lead(s, task.lead_id))
        if row is None:
            return None
        # The CRM id a push of this pass got, else the lead's once a push of the contact succeeded:
        # until then the id may be one the CRM no longer has (deleted there), which a task cannot be
        # attached to, and the contact's own pending push would create it again under a new id; whether
        # that push or this task was retried first decided whether the task was dead-lettered.
        contact = remote_ids.get(task.lead_id) or (row.crm_id if row.pushed_hash is not None else None)
        if not contact:
            # The contact must exist before a task can be attached to it.
            first = await self._push_contact(task.lead_id, remote=remote_ids)
            if first is not None:
                await self.sql(lambda s: self._contact_records(s, [first]).record(first, self.clock.now()).flush())
            row = await self.read(lambda s: st.get_lead(s, task.lead_id))
            contact = row.crm_id if row else None
            if not contact:
                raise Retryable("contact not in the CRM yet")
        props = {
            "hs_task_subject": task.title[:250],
            "hs_task_body": f"{task.details.get('why', '')} (kind {task.kind}, rule {task.rule})",
            "hs_task_priority": "HIGH" if task.priority == "high" else "MEDIUM",
            "hs_task_status": "NOT_STARTED",
            "hs_task_type": "CALL" if task.kind in ("sales_alert", "consultation") else "TODO",
            "hs_timestamp": (task.due_at or self.clock.now()).isoformat(),
            "hubspot_owner_id": task.owner or "",
            "nurture_task_id": task.id,
            "nurture_kind": task.kind,
        }
        remote = None
        if int(job.attempts) > 0 or task.remote_id:
            remote = task.remote_id or await self.connector.find("tasks", "nurture_task_id", task.id)
        if remote is None:
            remote = await self.connector.create_task(contact, props)
        note = None
        if task.document:
            if int(job.attempts) > 0:
                note = await self.connector.find("notes", "nurture_task_id", task.id)
            if note is None:
                note = await self.connector.create_note(contact, remote, {
                    "hs_note_body": task.document, "hs_timestamp": self.clock.now().isoformat(),
                    "nurture_task_id": task.id})
        self.stats.pushes += 1

        def apply(s: Session) -> None:
            st.update_task(s, task.id, status="pushed", remote_id=remote)
            st.add_timeline(s, task.lead_id, self.clock.now(), "task_pushed",
                            f"{'Notification' if task.kind == 'notify' else 'Task'} {remote} created in the CRM "
                            f"for {task.owner or 'unassigned'}",
                            {"task_id": task.id, "remote_id": remote, "note_id": note, "contact": contact})

        return apply

    def _deal_linked(self, job: st.PushJob) -> Callable[[Session], None]:
        def apply(s: Session) -> None:
            st.add_timeline(s, job.lead_id, self.clock.now(), "deal_linked",
                            f"Proposal linked on CRM deal {job.payload['deal_id']}",
                            {"job": job.id, "deal_id": job.payload["deal_id"], "proposal_id": job.ref})

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
                    # It returns after a short pass: what falls due next is a trickle, and a moment's
                    # wait lets the next pass take more of it at once.
                    await asyncio.sleep(PUSH_LINGER_S)
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
        await self.sql(lambda s: st.requeue_running(s, self.replica, self.clock.now()))
