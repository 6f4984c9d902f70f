"""SQL for crm_sync: blocking functions that take a Session (so several can share one transaction,
as the group commit does) or open their own. The server runs them in the database executor."""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, NamedTuple, TypeVar, cast, overload

from sqlalchemy import bindparam, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from nurture import jsoncodec, times
from nurture.db import RetryTransaction, insert_new, session_writes
from nurture.jsontypes import JsonObject, JsonValue
from services.crm_sync.domain import FieldState
from services.crm_sync.tables import (
    changes,
    contact_links,
    inbound,
    leads,
    outbox,
    proposals,
    round_robin,
    tasks,
    timeline,
)

Sessions = Callable[[], AbstractContextManager[Session]]


aware = times.utc_or_none  # SQLite hands datetimes back naive; every stored time is UTC


_LEAD_COLUMNS = tuple(c.name for c in leads.columns)
# `_lead_tuple`'s order; the table's columns must not move without it.
assert _LEAD_COLUMNS == ("lead_id", "crm", "crm_id", "email", "contact_modified_at", "inbound_hash", "version",
                         "snapshot", "fields", "projection", "journeys", "owner", "team", "meeting_link",
                         "pushed_hash", "converted_at", "updated_at"), _LEAD_COLUMNS
_J = TypeVar("_J")
_EMPTY_JSON = {"snapshot": "{}", "fields": "{}", "projection": "{}", "journeys": "[]"}


class _JsonColumn(Generic[_J]):
    """A JSON column of `LeadRecord`: its stored text is decoded on first read, and a row writes back
    the text it read for a column nobody read or set (a path reads a few of the four: the inbound write
    `fields`, a push's read neither `projection` nor, often, `fields`; the bus consumer sets `snapshot`
    without reading it). A column that was read is encoded again at the write, since its value may have
    been changed in place."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.text, self.value = name, f"_{name}_text", f"_{name}"

    @overload
    def __get__(self, row: None, owner: type) -> _JsonColumn[_J]: ...

    @overload
    def __get__(self, row: LeadRecord, owner: type) -> _J: ...

    def __get__(self, row: LeadRecord | None, owner: type) -> _J | _JsonColumn[_J]:
        if row is None:
            return self
        value = getattr(row, self.value)
        if value is _UNREAD:
            value = jsoncodec.loads(getattr(row, self.text) or _EMPTY_JSON[self.name])
            setattr(row, self.value, value)
        return cast(_J, value)

    def __set__(self, row: LeadRecord, value: _J) -> None:
        setattr(row, self.value, value)

    def stored(self, row: LeadRecord) -> str:
        """The column's text to write: as read if the value was never decoded or set."""
        value = getattr(row, self.value)
        if value is _UNREAD:
            return cast(str, getattr(row, self.text) or _EMPTY_JSON[self.name])
        return jsoncodec.dumps(value, default=str)


_UNREAD: Any = object()  # a JSON column's value not decoded yet


class LeadRecord:
    """What crm_sync keeps of a lead (a `crm_sync_leads` row): the CRM contact it is linked to, the last
    snapshot the bus carried, per-field sync state, the projection last pushed, and the sales owner.
    Its JSON columns are decoded when first read (`_JsonColumn`)."""

    __slots__ = ("lead_id", "updated_at", "crm", "crm_id", "email", "contact_modified_at", "inbound_hash", "version",
                 "owner", "team", "meeting_link", "pushed_hash", "converted_at",
                 "_snapshot", "_snapshot_text", "_fields", "_fields_text", "_projection", "_projection_text",
                 "_journeys", "_journeys_text")

    snapshot = _JsonColumn[JsonObject]()  # the lead as the bus last carried it
    fields = _JsonColumn[dict[str, FieldState]]()  # field -> its sync state (values and times per side)
    projection = _JsonColumn[JsonObject]()  # the change feed's last projection
    journeys = _JsonColumn[list[JsonValue]]()

    def __init__(self, lead_id: str, updated_at: datetime, *, crm: str | None = None, crm_id: str | None = None,
                 email: str | None = None, contact_modified_at: datetime | None = None,
                 inbound_hash: str | None = None, version: int = 0, owner: str | None = None,
                 team: str | None = None, meeting_link: str | None = None, pushed_hash: str | None = None,
                 converted_at: datetime | None = None, stored: dict[str, str] | None = None) -> None:
        """A row; `stored`: the JSON columns' texts as read (a column left out is empty)."""
        self.lead_id, self.updated_at, self.crm, self.crm_id, self.email = lead_id, updated_at, crm, crm_id, email
        self.contact_modified_at, self.inbound_hash, self.version = contact_modified_at, inbound_hash, version
        self.owner, self.team, self.meeting_link = owner, team, meeting_link
        self.pushed_hash, self.converted_at = pushed_hash, converted_at
        texts = stored or _EMPTY_JSON
        self._snapshot_text, self._fields_text = texts.get("snapshot", "{}"), texts.get("fields", "{}")
        self._projection_text, self._journeys_text = texts.get("projection", "{}"), texts.get("journeys", "[]")
        self._snapshot = self._fields = self._projection = self._journeys = _UNREAD

    def stored(self, column: str) -> str:
        """A JSON column's text to write (see `_JsonColumn.stored`)."""
        return cast(_JsonColumn[Any], LeadRecord.__dict__[column]).stored(self)

    def __repr__(self) -> str:
        return f"LeadRecord({self.lead_id!r}, crm_id={self.crm_id!r}, version={self.version!r})"


def _lead_row(row: Any) -> LeadRecord:
    m = row if isinstance(row, dict) else row._mapping
    return LeadRecord(
        m["lead_id"], aware(m["updated_at"]) or m["updated_at"], crm=m["crm"], crm_id=m["crm_id"], email=m["email"],
        contact_modified_at=aware(m["contact_modified_at"]), inbound_hash=m["inbound_hash"], version=m["version"],
        owner=m["owner"], team=m["team"], meeting_link=m["meeting_link"], pushed_hash=m["pushed_hash"],
        converted_at=aware(m["converted_at"]),
        stored={"snapshot": m["snapshot"], "fields": m["fields"], "projection": m["projection"],
                "journeys": m["journeys"]})


@dataclass(frozen=True, slots=True)
class PushJob:
    """A push of the outbound queue (a `crm_sync_outbox` row, its payload decoded, times aware UTC).
    `op`: contact | task | lead | deal | erase; `ref`: the task or proposal it is about."""

    id: int
    lead_id: str
    op: str
    ref: str
    payload: JsonObject   # what the push sends, as queued (a lead update's fields, a deal's properties)
    status: str           # pending | running | done | dead
    attempts: int
    due_at: datetime
    last_error: str | None
    created_at: datetime
    done_at: datetime | None


@dataclass(frozen=True, slots=True)
class FinishedJob:
    """What became of a push: its new status, attempts and due time, the error (None when done)."""

    job_id: int
    status: str
    attempts: int
    due_at: datetime
    error: str | None
    now: datetime


@dataclass(frozen=True, slots=True)
class Task:
    """A task or notification for sales (a `crm_sync_tasks` row, its details decoded, times aware UTC).
    `status`: queued | pushed | held | dead; `remote_id`: the CRM's task once pushed."""

    id: str
    dedupe_key: str
    lead_id: str
    kind: str
    title: str
    priority: str
    owner: str | None
    due_at: datetime | None
    details: JsonObject   # why it was asked for, and the facts and rule behind it (stored verbatim)
    document: str
    rule: str
    status: str
    remote_id: str | None
    created_at: datetime


def _task(row: Any) -> Task:
    return Task(id=row.id, dedupe_key=row.dedupe_key, lead_id=row.lead_id, kind=row.kind, title=row.title,
                priority=row.priority, owner=row.owner, due_at=aware(row.due_at),
                details=jsoncodec.loads(row.details or "{}"), document=row.document or "", rule=row.rule or "",
                status=row.status, remote_id=row.remote_id, created_at=aware(row.created_at) or row.created_at)


def _push_job(row: Any) -> PushJob:
    return PushJob(id=int(row.id), lead_id=row.lead_id, op=row.op, ref=row.ref or "",
                   payload=jsoncodec.loads(row.payload or "{}"), status=row.status, attempts=int(row.attempts),
                   due_at=aware(row.due_at) or row.due_at, last_error=row.last_error,
                   created_at=aware(row.created_at) or row.created_at, done_at=aware(row.done_at))


def new_lead_row(lead_id: str, now: datetime) -> LeadRecord:
    return LeadRecord(lead_id=lead_id, updated_at=now)


def get_lead(s: Session, lead_id: str, *, lock: bool = False) -> LeadRecord | None:
    """The lead's row; with `lock`, locked until the transaction ends (see `get_leads`)."""
    row = s.execute(_LEAD_BY_ID_LOCKED if lock else _LEAD_BY_ID, {"b_lead_id": lead_id}).first()
    return _lead_row(row) if row else None


def get_leads(s: Session, lead_ids: list[str], *, lock: bool = False) -> dict[str, LeadRecord]:
    """The leads' rows. A transaction that writes back a row it read passes `lock`: on PostgreSQL
    (concurrent writers) the rows are locked in key order, as every path that locks leads does, so
    a concurrent writer of the same lead (the bus consumer, an inbound contact, a push outcome)
    waits and then reads the other's committed row instead of overwriting it with an older one."""
    if not lead_ids:
        return {}
    # On the driver's cursor (nurture.db.DriverWrites.select: the same rows, locked the same way): with
    # the lazy JSON columns, 14 locked rows cost 11 µs a row where SQLAlchemy's execution took 19.
    writes, conn = session_writes(s)
    return {m["lead_id"]: _lead_row(m)
            for m in writes.select(conn, leads, _LEAD_COLUMNS, "lead_id", sorted(set(lead_ids)), lock=lock)}


@dataclass(slots=True)
class PushState:
    """The part of a lead's row (`crm_sync_leads`) a contact push's outcome changes: its CRM link, the
    hash of what was pushed and the per-field sync state. The push loop reads (locked) and writes back
    only these columns, so recording a pass neither decodes nor re-encodes the snapshot, projection and
    journeys it leaves alone, most of a row; `fields` is decoded only when a push changes it (a push
    of platform-owned values alone, the common one, leaves it as stored)."""

    lead_id: str
    crm: str | None
    crm_id: str | None
    pushed_hash: str | None
    stored_fields: str
    _fields: dict[str, FieldState] | None = None

    @property
    def fields(self) -> dict[str, FieldState]:
        if self._fields is None:
            self._fields = jsoncodec.loads(self.stored_fields or "{}")
        return self._fields

    def fields_to_store(self) -> str:
        """`fields` as the column stores it: as read unless it was decoded (and so maybe changed)."""
        if self._fields is None:
            return self.stored_fields
        return jsoncodec.dumps(self._fields, default=str)


def get_push_states(s: Session, lead_ids: list[str]) -> dict[str, PushState]:
    """The leads' push state, locked (in key order, see `get_leads`) until the transaction ends."""
    out: dict[str, PushState] = {}
    for chunk in iter_chunks(sorted(set(lead_ids)), 500):
        rows = s.execute(_PUSH_STATES_LOCKED, {"b_lead_ids": chunk})
        for row in rows:
            out[row.lead_id] = PushState(row.lead_id, row.crm, row.crm_id, row.pushed_hash, row.fields)
    return out


def save_push_states(s: Session, states: list[PushState]) -> None:
    """The states' columns in one executemany, in key order."""
    if states:
        writes, conn = session_writes(s)
        writes.update(conn, leads, _PUSH_STATE_COLUMNS, "lead_id", [
            (p.crm, p.crm_id, p.pushed_hash, p.fields_to_store(), p.lead_id)
            for p in sorted(states, key=lambda p: p.lead_id)])


def find_lead(s: Session, *, crm: str, crm_id: str | None, lead_id: str | None, email: str | None
              ) -> LeadRecord | None:
    """Match a CRM contact: by CRM id, then the lead id the CRM stored, then email."""
    if crm_id:
        row = s.execute(select(leads).where(leads.c.crm == crm, leads.c.crm_id == crm_id)).first()
        if row:
            return _lead_row(row)
        former = s.execute(_FORMER_LINKS, {"b_crm": crm, "b_crm_ids": [crm_id]}).first()
        if former and (found := get_lead(s, former.lead_id)):
            return found
    if lead_id:
        found = get_lead(s, lead_id)
        if found:
            return found
    if email:
        row = s.execute(select(leads).where(func.lower(leads.c.email) == email.lower()).limit(1)).first()
        if row:
            return _lead_row(row)
    return None


class LeadQuery(NamedTuple):
    """How a contact may be known here: by its CRM id, our lead id, or its email (in that order)."""

    crm: str
    crm_id: str | None
    lead_id: str | None
    email: str | None


def find_leads(s: Session, wanted: list[LeadQuery]) -> list[LeadRecord | None]:
    """`find_lead` for many contacts at once: three queries, not three per contact."""
    by_crm_id: dict[tuple[str, str], LeadRecord] = {}
    for crm, crm_ids in _crm_ids_by_crm((w.crm, w.crm_id) for w in wanted):
        for chunk in iter_chunks(crm_ids, 500):
            for row in s.execute(_LEADS_BY_CRM_IDS, {"b_crm": crm, "b_crm_ids": chunk}).all():
                by_crm_id[(row.crm, row.crm_id)] = _lead_row(row)
    # A CRM id that is no lead's link now may have been one (`contact_links`): it keeps its lead.
    formerly: dict[tuple[str, str], str] = {}
    for crm, crm_ids in _crm_ids_by_crm((w.crm, w.crm_id) for w in wanted if (w.crm, w.crm_id) not in by_crm_id):
        for chunk in iter_chunks(crm_ids, 500):
            for row in s.execute(_FORMER_LINKS, {"b_crm": crm, "b_crm_ids": chunk}).all():
                formerly[(row.crm, row.crm_id)] = row.lead_id
    by_id = get_leads(s, [w.lead_id for w in wanted if w.lead_id] + list(formerly.values()))
    emails = sorted({w.email.lower() for w in wanted if w.email})
    by_email: dict[str, LeadRecord] = {}
    for chunk in iter_chunks(emails, 500):
        rows = s.execute(_LEADS_BY_EMAILS, {"b_emails": chunk}).all()
        for row in rows:
            by_email.setdefault(row.email.lower(), _lead_row(row))
    out: list[LeadRecord | None] = []
    for crm, crm_id, lead_id, email in wanted:
        found = (by_crm_id.get((crm, crm_id)) if crm_id else None) \
            or (by_id.get(formerly[(crm, crm_id)]) if crm_id and (crm, crm_id) in formerly else None) \
            or (by_id.get(lead_id) if lead_id else None) \
            or (by_email.get(email.lower()) if email else None)
        out.append(found)
    return out


# Statements built once: parameters travel separately (IN lists as expanding parameters), so
# SQLAlchemy compiles and caches them once instead of generating a cache key for a fresh statement
# (a fresh `.values(...)` or IN clause) on every call.
_LEAD_BY_ID = select(leads).where(leads.c.lead_id == bindparam("b_lead_id"))
_LEAD_BY_ID_LOCKED = _LEAD_BY_ID.with_for_update()
_LEADS_BY_CRM_IDS = select(leads).where(leads.c.crm == bindparam("b_crm"),
                                        leads.c.crm_id.in_(bindparam("b_crm_ids", expanding=True)))
_LINKS_BY_CRM_IDS = select(leads.c.lead_id, leads.c.crm, leads.c.crm_id).where(
    leads.c.crm == bindparam("b_crm"), leads.c.crm_id.in_(bindparam("b_crm_ids", expanding=True)))
_FORMER_LINKS = select(contact_links).where(contact_links.c.crm == bindparam("b_crm"),
                                            contact_links.c.crm_id.in_(bindparam("b_crm_ids", expanding=True)))
_LEADS_BY_EMAILS = select(leads).where(func.lower(leads.c.email).in_(bindparam("b_emails", expanding=True))
                                       ).order_by(leads.c.lead_id)
_PUSH_STATES_LOCKED = select(leads.c.lead_id, leads.c.crm, leads.c.crm_id, leads.c.pushed_hash, leads.c.fields).where(
    leads.c.lead_id.in_(bindparam("b_lead_ids", expanding=True))).order_by(leads.c.lead_id).with_for_update()
# The hot writes (rows per contact: lead updates, push states, timeline and change-feed lines, pushes
# and their outcomes) go on the driver's cursor (nurture.db.DriverWrites): SQLAlchemy's per-row
# parameter processing and execution context cost more than SQLite's own work for them.
_PUSH_STATE_COLUMNS = ("crm", "crm_id", "pushed_hash", "fields")
_LEAD_UPDATE_COLUMNS = tuple(c for c in _LEAD_COLUMNS if c != "lead_id")
_TIMELINE_COLUMNS = ("id", "lead_id", "at", "type", "summary", "details")
_CHANGE_COLUMNS = ("lead_id", "crm_id", "changed", "data", "at")
_JOB_COLUMNS = ("lead_id", "op", "ref", "payload", "status", "attempts", "due_at", "created_at")
_TASK_COLUMNS = ("id", "dedupe_key", "lead_id", "kind", "title", "priority", "owner", "due_at", "details", "document",
                 "rule", "status", "remote_id", "created_at")
_FINISH_COLUMNS = ("status", "attempts", "due_at", "last_error", "done_at")
_INSERT_TIMELINE = insert(timeline)
_INSERT_CHANGE = insert(changes)
_INSERT_JOB = insert(outbox)
# Locked (see `pending_jobs`): a pending push found here is trusted to carry a change not yet committed.
_PENDING_JOB = select(outbox.c.id).where(outbox.c.lead_id == bindparam("b_lead_id"), outbox.c.op == bindparam("b_op"),
                                         outbox.c.status == "pending").limit(1).with_for_update()
_PENDING_JOBS = select(outbox.c.lead_id).where(outbox.c.lead_id.in_(bindparam("b_lead_ids", expanding=True)),
                                               outbox.c.op == bindparam("b_op"), outbox.c.status == "pending"
                                               ).order_by(outbox.c.id).with_for_update()
# The claim's two statements, built once (as the look-ups above): built per pass, each was compiled
# into a cache key again on every claim.
_DUE_JOBS = (select(outbox).where(outbox.c.status == "pending", outbox.c.due_at <= bindparam("b_now"))
             .order_by(outbox.c.due_at, outbox.c.id).limit(bindparam("b_limit")).with_for_update(skip_locked=True))
_MARK_RUNNING = (update(outbox).where(outbox.c.id.in_(bindparam("b_ids", expanding=True)))
                 .values(status="running", claimed_by=bindparam("b_by"), claimed_at=bindparam("b_at")))
_TASK_BY_KEY = select(tasks).where(tasks.c.dedupe_key == bindparam("b_key"))
_TASK_BY_ID = select(tasks).where(tasks.c.id == bindparam("b_id"))
# A held task (closed loop) never reached sales: a later ask is not merged into it.
_RECENT_TASK = select(tasks).where(tasks.c.lead_id == bindparam("b_lead_id"), tasks.c.kind == bindparam("b_kind"),
                                   tasks.c.created_at >= bindparam("b_since"), tasks.c.status != "held").limit(1)
_INSERT_TASK = insert(tasks)


def save_lead(s: Session, row: LeadRecord, *, exists: bool) -> None:
    save_leads(s, [] if exists else [row], [row] if exists else [])


def _lead_tuple(row: LeadRecord) -> tuple[Any, ...]:
    """The row's column values in `_LEAD_COLUMNS` order (the key first), its JSON columns as stored."""
    return (row.lead_id, row.crm, row.crm_id, row.email, row.contact_modified_at, row.inbound_hash, row.version,
            row.stored("snapshot"), row.stored("fields"), row.stored("projection"), row.stored("journeys"),
            row.owner, row.team, row.meeting_link, row.pushed_hash, row.converted_at, row.updated_at)


def save_leads(s: Session, new: list[LeadRecord], changed: list[LeadRecord]) -> None:
    """Many leads in two executemany statements (full rows, as save_lead writes them), in key order
    (as every path that writes several rows locks them, see nurture.db)."""
    if new:
        # Two transactions may both find no row for a new lead (the bus consumer and an inbound
        # contact): the second skips its insert (no unique violation, whose error aborts the
        # transaction) and runs again, now updating the row the first committed.
        # On the driver's cursor, as the updates below: SQLAlchemy's executemany with RETURNING ran a
        # statement per row and processed each row's parameters and result.
        writes, conn = session_writes(s)
        made = writes.insert(conn, leads, _LEAD_COLUMNS, [_lead_tuple(r) for r in sorted(new, key=lambda r: r.lead_id)],
                             returning="lead_id", skip_existing=["lead_id"])
        if len(made) < len(new):
            raise RetryTransaction("a lead's row was created by a concurrent transaction")
    if changed:
        writes, conn = session_writes(s)
        writes.update(conn, leads, _LEAD_UPDATE_COLUMNS, "lead_id",
                      [(*_lead_tuple(r)[1:], r.lead_id) for r in sorted(changed, key=lambda r: r.lead_id)])


def _crm_ids_by_crm(pairs: Iterable[tuple[str, str | None]]) -> list[tuple[str, list[str]]]:
    """(crm, its CRM ids, sorted) for each CRM named: a CRM id is looked up with its CRM, so the
    query uses the (crm, crm_id) index (by crm_id alone it scanned the whole table per batch)."""
    by_crm: dict[str, set[str]] = {}
    for crm, crm_id in pairs:
        if crm_id:
            by_crm.setdefault(crm, set()).add(crm_id)
    return [(crm, sorted(ids)) for crm, ids in sorted(by_crm.items())]


def unlink_crm_ids(s: Session, owners: dict[tuple[str, str], str]) -> None:
    """`unlink_crm_id` for many (crm, crm_id) → the lead keeping it: one query when nothing moved."""
    if not owners:
        return
    moved: list[str] = []
    for crm, crm_ids in _crm_ids_by_crm(owners):
        for chunk in iter_chunks(crm_ids, 500):
            for row in s.execute(_LINKS_BY_CRM_IDS, {"b_crm": crm, "b_crm_ids": chunk}):
                keep = owners.get((row.crm, row.crm_id))
                if keep is not None and keep != row.lead_id:
                    moved.append(row.lead_id)
    if moved:
        s.execute(update(leads).where(leads.c.lead_id == bindparam("b_lead_id")).values(crm_id=None),
                  [{"b_lead_id": lead_id} for lead_id in sorted(set(moved))])


def remember_links(s: Session, links: Iterable[tuple[str, str, str]], at: datetime) -> None:
    """(crm, crm_id, lead_id): a CRM contact id that keeps resolving to a lead it is not (or no longer)
    the link of. The first lead remembered for an id stays its lead."""
    rows = sorted({(crm, crm_id): lead_id for crm, crm_id, lead_id in links}.items())
    if rows:
        s.execute(insert_new(s, contact_links, ["crm", "crm_id"]),
                  [{"crm": crm, "crm_id": crm_id, "lead_id": lead_id, "at": at} for (crm, crm_id), lead_id in rows])


def unlink_crm_id(s: Session, crm: str, crm_id: str, keep_lead: str) -> None:
    """The CRM id moved to another lead (merged contacts in the CRM): the old link is dropped."""
    s.execute(update(leads).where(leads.c.crm == crm, leads.c.crm_id == crm_id, leads.c.lead_id != keep_lead)
              .values(crm_id=None))


# -- inbound activities and deals ------------------------------------------------------------------

def get_inbound(s: Session, crm: str, kind: str, object_id: str, *, lock: bool = False) -> dict[str, Any] | None:
    """The record of one CRM object; `lock`: FOR UPDATE, to judge a write against it (PostgreSQL; SQLite's
    one writer serialises the same)."""
    query = select(inbound).where(inbound.c.crm == crm, inbound.c.kind == kind, inbound.c.object_id == object_id)
    row = s.execute(query.with_for_update() if lock else query).first()
    if not row:
        return None
    m = dict(row._mapping)
    m["modified_at"] = aware(m["modified_at"])
    return m


def put_inbound(s: Session, values: dict[str, Any], *, exists: bool) -> None:
    if exists:
        s.execute(update(inbound).where(inbound.c.crm == values["crm"], inbound.c.kind == values["kind"],
                                        inbound.c.object_id == values["object_id"]).values(values))
    else:
        s.execute(insert(inbound).values(values))


# -- timeline ----------------------------------------------------------------------------------------

_timeline_seq = itertools.count()


def timeline_id() -> str:
    """An id that sorts in the order items were written: the timeline is read by (at, id), and under a
    virtual clock a whole cascade (assigned, task created, merged, pushed) shares one `at`, so a random
    id would shuffle cause and effect. Wall-clock ns (not domain time: only the order matters) plus a
    process counter, plus randomness for uniqueness across processes: 48 bits of `random`'s generator
    (seeded from the OS at start and again in a forked child), not `uuid4`, whose system call for each
    line was a twentieth of the SQL writer's time under single-contact calls (py-spy, bench/crm.py)."""
    return f"{time.time_ns():016x}{next(_timeline_seq) % 0x10000:04x}{random.getrandbits(48):012x}"


class TimelineEntry(NamedTuple):
    """A line of a lead's CRM timeline (`crm_sync_timeline`): its id orders lines written at one `at`."""

    id: str
    lead_id: str
    at: datetime
    type: str
    summary: str
    details: JsonObject   # what happened, stored verbatim as JSON


def timeline_row(lead_id: str, at: datetime, type_: str, summary: str, details: JsonObject) -> TimelineEntry:
    """A line to write with `add_timelines`, its id taken now (the lines keep the order they were made in)."""
    return TimelineEntry(timeline_id(), lead_id, at, type_, summary, details)


def add_timelines(s: Session, entries: list[TimelineEntry]) -> None:
    if entries:
        writes, conn = session_writes(s)
        writes.insert(conn, timeline, _TIMELINE_COLUMNS, [
            (e.id, e.lead_id, e.at, e.type, e.summary, jsoncodec.dumps(e.details, default=str)) for e in entries])


def add_timeline(s: Session, lead_id: str, at: datetime, type_: str, summary: str, details: JsonObject,
                 item_id: str | None = None) -> None:
    s.execute(_INSERT_TIMELINE, {"id": item_id or timeline_id(), "lead_id": lead_id, "at": at, "type": type_,
                                 "summary": summary, "details": jsoncodec.dumps(details, default=str)})


def get_timeline(s: Session, lead_id: str, limit: int) -> list[TimelineEntry]:
    rows = s.execute(select(timeline).where(timeline.c.lead_id == lead_id)
                     .order_by(timeline.c.at, timeline.c.id).limit(limit)).all()
    return [TimelineEntry(r.id, r.lead_id, aware(r.at) or r.at, r.type, r.summary, jsoncodec.loads(r.details))
            for r in rows]


# -- change feed -------------------------------------------------------------------------------------

def add_change(s: Session, lead_id: str, crm_id: str | None, changed: list[str], data: dict[str, Any],
               at: datetime) -> None:
    s.execute(_INSERT_CHANGE, {"lead_id": lead_id, "crm_id": crm_id, "changed": jsoncodec.dumps(changed),
                               "data": jsoncodec.dumps(data, default=str), "at": at})


class Change(NamedTuple):
    """An entry of the change feed the CRM watches: the lead, which keys of its projection changed, and
    the projection itself (domain.projection: score, grade, stage, segment, journeys, engagement)."""

    seq: int
    lead_id: str
    crm_id: str | None
    changed: list[str]
    data: JsonObject
    at: datetime


def changes_after(s: Session, seq: int, limit: int) -> list[Change]:
    rows = s.execute(select(changes).where(changes.c.seq > seq).order_by(changes.c.seq).limit(limit)).all()
    return [Change(r.seq, r.lead_id, r.crm_id, jsoncodec.loads(r.changed), jsoncodec.loads(r.data), aware(r.at) or r.at)
            for r in rows]


# -- outbound queue ------------------------------------------------------------------------------------

def pending_jobs(s: Session, lead_ids: list[str], op: str) -> set[str]:
    """The leads among `lead_ids` with a pending push of `op` (one query for a batch of messages),
    those pushes locked until the transaction ends. A writer that skips queuing a push because one is
    pending relies on it reading the lead after this transaction commits: on PostgreSQL the lock makes
    a claim (`due_jobs`, SKIP LOCKED) pass over it until then, and a claim already under way is waited
    for, after which the push is no longer pending and the writer queues its own. Unlocked, a pass
    could claim the push and read the older lead before this commit, and the change was never pushed.
    Callers lock their leads first (leads, then pushes: the order of every path, so no deadlock)."""
    out: set[str] = set()
    for chunk in iter_chunks(sorted(set(lead_ids)), 500):
        out.update(s.scalars(_PENDING_JOBS, {"b_lead_ids": chunk, "b_op": op}))
    return out


class BatchWrites:
    """The bus consumer's writes of one transaction, sent as one executemany per statement at
    `flush` instead of a round trip per row (on PostgreSQL each round trip cost more than the
    row's work: pushes ran at a sixth of SQLite's rate). Only writes nothing in the transaction
    reads back before the flush are gathered here: lead rows (the batch keeps them in memory; the
    caller flushes before reading one from SQL), change-feed rows, new push jobs, and new tasks and
    timeline lines (`BatchTaskWrites` follows the tasks and merges it adds)."""

    def __init__(self) -> None:
        self._leads: dict[str, tuple[LeadRecord, bool]] = {}  # lead id -> (row, exists in SQL)
        self._changes: list[tuple[Any, ...]] = []  # in _CHANGE_COLUMNS order
        self._jobs: list[tuple[Any, ...]] = []  # in _JOB_COLUMNS order
        self._tasks: list[tuple[Any, ...]] = []  # in _TASK_COLUMNS order
        self._timeline: list[TimelineEntry] = []

    def save_lead(self, row: LeadRecord, *, exists: bool) -> None:
        """The row as it is at flush time (later messages of the batch may change it further)."""
        first = self._leads.get(row.lead_id)
        self._leads[row.lead_id] = (row, first[1] if first else exists)

    def add_change(self, lead_id: str, crm_id: str | None, changed: list[str], data: dict[str, Any],
                   at: datetime) -> None:
        self._changes.append((lead_id, crm_id, jsoncodec.dumps(changed), jsoncodec.dumps(data, default=str), at))

    def enqueue(self, lead_id: str, op: str, now: datetime, *, ref: str = "",
                payload: dict[str, Any] | None = None) -> None:
        self._jobs.append((lead_id, op, ref, jsoncodec.dumps(payload or {}), "pending", 0, now, now))

    def add_task(self, task: Task) -> None:
        self._tasks.append(_task_values(task))

    def add_timeline(self, entry: TimelineEntry) -> None:
        self._timeline.append(entry)

    def flush(self, s: Session) -> None:
        if self._leads:
            rows = list(self._leads.values())
            save_leads(s, [row for row, exists in rows if not exists], [row for row, exists in rows if exists])
        if self._changes or self._jobs or self._tasks:
            writes, conn = session_writes(s)
            if self._changes:
                writes.insert(conn, changes, _CHANGE_COLUMNS, self._changes)
            if self._tasks:
                writes.insert(conn, tasks, _TASK_COLUMNS, self._tasks)
            if self._jobs:
                writes.insert(conn, outbox, _JOB_COLUMNS, self._jobs)
        add_timelines(s, self._timeline)
        self._leads, self._changes, self._jobs, self._tasks, self._timeline = {}, [], [], [], []


class TaskWrites:
    """Where task creation (`Tasks._create_task`) looks for today's task of a kind and for merges
    recorded before, and where it writes its task, timeline lines and pushes: here straight to SQL, a
    statement each (one request's task). `BatchTaskWrites` is the bus consumer's."""

    def __init__(self, s: Session) -> None:
        self.s = s

    def recent_task(self, lead_id: str, kind: str, since: datetime) -> Task | None:
        return recent_task(self.s, lead_id, kind, since)

    def was_merged(self, lead_id: str, dedupe_key: str) -> bool:
        return was_merged(self.s, lead_id, dedupe_key)

    def insert_task(self, task: Task) -> None:
        insert_task(self.s, task)

    def add_timeline(self, lead_id: str, at: datetime, type_: str, summary: str, details: JsonObject) -> None:
        add_timeline(self.s, lead_id, at, type_, summary, details)

    def enqueue(self, lead_id: str, op: str, now: datetime, *, ref: str = "",
                payload: dict[str, Any] | None = None) -> None:
        enqueue(self.s, lead_id, op, now, ref=ref, payload=payload)

    def enqueue_contact(self, lead_id: str, now: datetime) -> None:
        """A contact push, unless one is pending (it reads the lead when it runs, so it covers this)."""
        enqueue(self.s, lead_id, "contact", now, coalesce=True)


class BatchTaskWrites(TaskWrites):
    """The bus consumer's task creation: its writes join the batch's (`BatchWrites`, one executemany
    per table at the flush), and its reads are answered from memory: the leads' recent tasks and
    merges read for all of them at once (`preload`, or one lead when first asked), then followed as
    the batch adds its own. Each lead's first crossing of the task rules (a sales alert, an MQL) came
    as a flush of the batch and ten statements or so per task, one message at a time: at the start of
    a stream of events over new leads that was most of crm_sync's bus transaction, and its lag.
    `queued`: the leads with a pending contact push (read locked, or queued by the batch)."""

    def __init__(self, s: Session, batch: BatchWrites, queued: set[str], since: datetime) -> None:
        super().__init__(s)
        self._batch, self.queued, self._since = batch, queued, since
        self._loaded: set[str] = set()
        self._recent: dict[tuple[str, str], Task] = {}  # (lead, kind) -> a task of that kind since `since`
        self._merged: set[tuple[str, str]] = set()  # (lead, dedupe key) merged into another task

    def preload(self, lead_ids: Iterable[str]) -> None:
        wanted = sorted(set(lead_ids) - self._loaded)
        if not wanted:
            return
        self._loaded.update(wanted)
        for task in recent_tasks(self.s, wanted, self._since):
            self._recent.setdefault((task.lead_id, task.kind), task)
        self._merged.update(merged_keys(self.s, wanted))

    def forget(self, lead_id: str) -> None:
        """The lead was erased: what was read of it is gone (asked again, SQL answers), its pending
        contact push too (the erasure deleted it: the lead made again queues its own)."""
        self._loaded.discard(lead_id)
        self.queued.discard(lead_id)
        self._recent = {k: v for k, v in self._recent.items() if k[0] != lead_id}
        self._merged = {k for k in self._merged if k[0] != lead_id}

    def recent_task(self, lead_id: str, kind: str, since: datetime) -> Task | None:
        if since < self._since:  # an older window than the one read: ask SQL (after the batch's writes)
            self._batch.flush(self.s)
            return super().recent_task(lead_id, kind, since)
        self.preload([lead_id])
        task = self._recent.get((lead_id, kind))
        return task if task is not None and task.created_at >= since else None

    def was_merged(self, lead_id: str, dedupe_key: str) -> bool:
        self.preload([lead_id])
        return (lead_id, dedupe_key) in self._merged

    def insert_task(self, task: Task) -> None:
        if task.status != "held":  # as recent_task: a held task takes no later ask
            self._recent.setdefault((task.lead_id, task.kind), task)
        self._batch.add_task(task)

    def add_timeline(self, lead_id: str, at: datetime, type_: str, summary: str, details: JsonObject) -> None:
        if type_ == "task_merged":
            self._merged.add((lead_id, str(details.get("dedupe_key", ""))))
        self._batch.add_timeline(timeline_row(lead_id, at, type_, summary, details))

    def enqueue(self, lead_id: str, op: str, now: datetime, *, ref: str = "",
                payload: dict[str, Any] | None = None) -> None:
        self._batch.enqueue(lead_id, op, now, ref=ref, payload=payload)

    def enqueue_contact(self, lead_id: str, now: datetime) -> None:
        if lead_id not in self.queued:
            self._batch.enqueue(lead_id, "contact", now)
            self.queued.add(lead_id)


def enqueue(s: Session, lead_id: str, op: str, now: datetime, *, ref: str = "", payload: dict[str, Any] | None = None,
            coalesce: bool = False) -> bool:
    """Queue a push. With `coalesce`, a pending job of the same op for the lead already covers it
    (contact pushes read the latest state when they run); it is locked, as `pending_jobs` locks them."""
    if coalesce:
        pending = s.execute(_PENDING_JOB, {"b_lead_id": lead_id, "b_op": op}).first()
        if pending:
            return False
    s.execute(_INSERT_JOB, {"lead_id": lead_id, "op": op, "ref": ref, "payload": jsoncodec.dumps(payload or {}),
                            "status": "pending", "attempts": 0, "due_at": now, "created_at": now})
    return True


def due_jobs(s: Session, now: datetime, limit: int) -> list[PushJob]:
    """Pending jobs due now, locked for the claim. Rows another replica's claim holds are skipped
    (PostgreSQL's SKIP LOCKED; SQLite has one writer at a time): two replicas never take one job."""
    rows = s.execute(_DUE_JOBS, {"b_now": now, "b_limit": limit}).all()
    return [_push_job(r) for r in rows]


def finish_job(s: Session, job_id: int, *, status: str, attempts: int, due_at: datetime, error: str | None,
               now: datetime) -> None:
    finish_jobs(s, [FinishedJob(job_id, status, attempts, due_at, error, now)])


def finish_jobs(s: Session, finished: list[FinishedJob]) -> None:
    """Record many pushes' outcomes in one executemany, in job id order."""
    if finished:
        writes, conn = session_writes(s)
        writes.update(conn, outbox, _FINISH_COLUMNS, "id", [
            (f.status, f.attempts, f.due_at, f.error, f.now if f.status != "pending" else None, f.job_id)
            for f in sorted(finished, key=lambda f: f.job_id)])


def mark_running(s: Session, job_ids: list[int], replica: str, now: datetime) -> None:
    for chunk in iter_chunks(sorted(job_ids), 500):
        s.execute(_MARK_RUNNING, {"b_ids": chunk, "b_by": replica, "b_at": now})


def next_due(s: Session) -> datetime | None:
    value = s.execute(select(func.min(outbox.c.due_at)).where(outbox.c.status == "pending")).scalar()
    return aware(value)


def pending_summary(s: Session, now: datetime) -> tuple[int, int, datetime | None]:
    """Pushes waiting (first tries and retries): how many, how many due at `now`, the earliest due time."""
    waiting = outbox.c.status == "pending"
    pending, first = s.execute(select(func.count(), func.min(outbox.c.due_at)).where(waiting)).one()
    due = s.execute(select(func.count()).select_from(outbox).where(waiting, outbox.c.due_at <= now)).scalar()
    return int(pending), int(due or 0), aware(first)


def queue_stats(s: Session) -> dict[str, int]:
    rows = s.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status)).all()
    return {r[0]: int(r[1]) for r in rows}


def dead_jobs(s: Session) -> list[PushJob]:
    rows = s.execute(select(outbox).where(outbox.c.status == "dead").order_by(outbox.c.id)).all()
    return [_push_job(r) for r in rows]


def dead_page(s: Session, limit: int) -> tuple[list[PushJob], int]:
    """Dead pushes, the most recently given up first, and how many in all."""
    total = s.execute(select(func.count()).select_from(outbox).where(outbox.c.status == "dead")).scalar() or 0
    rows = s.execute(select(outbox).where(outbox.c.status == "dead")
                     .order_by(outbox.c.done_at.desc(), outbox.c.id.desc()).limit(limit)).all()
    return [_push_job(r) for r in rows], int(total)


def requeue_dead(s: Session, job_id: int, now: datetime) -> PushJob | None:
    """A dead push due again now with a fresh count of attempts (None: no dead push of that id)."""
    row = s.execute(select(outbox).where(outbox.c.id == job_id, outbox.c.status == "dead")).first()
    if row is None:
        return None
    s.execute(update(outbox).where(outbox.c.id == job_id).values(status="pending", attempts=0, due_at=now,
                                                                  done_at=None))
    return _push_job(row)


def job_status(s: Session, job_id: int) -> tuple[str, str | None]:
    row = s.execute(select(outbox.c.status, outbox.c.last_error).where(outbox.c.id == job_id)).one()
    return str(row.status), row.last_error


# -- tasks and assignment ------------------------------------------------------------------------------

def get_task_by_key(s: Session, dedupe_key: str) -> Task | None:
    row = s.execute(_TASK_BY_KEY, {"b_key": dedupe_key}).first()
    return _task(row) if row else None


def task_keys(s: Session, dedupe_keys: Iterable[str]) -> dict[str, str]:
    """Which of `dedupe_keys` a task holds, with its lead (one query for a batch of messages' plans)."""
    out: dict[str, str] = {}
    for chunk in iter_chunks(sorted(set(dedupe_keys)), 500):
        out.update((str(k), str(lead)) for k, lead in s.execute(
            select(tasks.c.dedupe_key, tasks.c.lead_id).where(tasks.c.dedupe_key.in_(chunk))))
    return out


def recent_task(s: Session, lead_id: str, kind: str, since: datetime) -> Task | None:
    """A task of this kind for this lead created since `since` (one sales task per lead and day,
    whichever rule or journey asked for it first)."""
    row = s.execute(_RECENT_TASK, {"b_lead_id": lead_id, "b_kind": kind, "b_since": since}).first()
    return _task(row) if row else None


def was_merged(s: Session, lead_id: str, dedupe_key: str) -> bool:
    """Whether a task asked for under this key was already merged into another (timeline task_merged)."""
    return (lead_id, dedupe_key) in merged_keys(s, [lead_id])


def get_task(s: Session, task_id: str) -> Task | None:
    row = s.execute(_TASK_BY_ID, {"b_id": task_id}).first()
    return _task(row) if row else None


def insert_task(s: Session, task: Task) -> None:
    s.execute(_INSERT_TASK, dict(zip(_TASK_COLUMNS, _task_values(task), strict=True)))


def _task_values(task: Task) -> tuple[Any, ...]:
    return (task.id, task.dedupe_key, task.lead_id, task.kind, task.title, task.priority, task.owner, task.due_at,
            jsoncodec.dumps(task.details, default=str), task.document, task.rule, task.status, task.remote_id,
            task.created_at)


def recent_tasks(s: Session, lead_ids: list[str], since: datetime) -> list[Task]:
    """The tasks of these leads created since `since` (`recent_task` for a batch's leads at once), held
    ones left out as there."""
    out: list[Task] = []
    for chunk in iter_chunks(sorted(set(lead_ids)), 500):
        out += [_task(r) for r in s.execute(select(tasks).where(tasks.c.lead_id.in_(chunk),
                                                                 tasks.c.created_at >= since,
                                                                 tasks.c.status != "held"))]
    return out


def merged_keys(s: Session, lead_ids: list[str]) -> set[tuple[str, str]]:
    """(lead, dedupe key) of every task ask these leads had merged into another (`was_merged` at once)."""
    out: set[tuple[str, str]] = set()
    for chunk in iter_chunks(sorted(set(lead_ids)), 500):
        for lead_id, details in s.execute(select(timeline.c.lead_id, timeline.c.details).where(
                timeline.c.lead_id.in_(chunk), timeline.c.type == "task_merged")):
            out.add((str(lead_id), str(json.loads(details).get("dedupe_key"))))
    return out


def update_task(s: Session, task_id: str, *, status: str, remote_id: str | None = None) -> None:
    """A task's new status (and, once pushed, the CRM's id of it)."""
    values: dict[str, str] = {"status": status}
    if remote_id is not None:
        values["remote_id"] = remote_id
    s.execute(update(tasks).where(tasks.c.id == task_id).values(values))


def lead_tasks(s: Session, lead_id: str) -> list[Task]:
    rows = s.execute(select(tasks).where(tasks.c.lead_id == lead_id).order_by(tasks.c.created_at)).all()
    return [_task(r) for r in rows]


def next_round_robin(s: Session, team: str, members: int) -> int:
    """The team member whose turn it is. The counter moves in one statement (`UPDATE ... RETURNING`),
    which takes the row lock: where a read then a write let two concurrent assignments on PostgreSQL
    read one position and give two leads to the same person."""
    s.execute(insert_new(s, round_robin, ["team"]).values(team=team, next=0))
    taken = s.execute(update(round_robin).where(round_robin.c.team == team)
                      .values(next=round_robin.c.next + 1).returning(round_robin.c.next)).scalar_one()
    return (int(taken) - 1) % members


# -- erasure -------------------------------------------------------------------------------------------

def erase_lead(s: Session, lead_id: str) -> int:
    removed = 0
    for table, column in ((leads, leads.c.lead_id), (inbound, inbound.c.lead_id), (timeline, timeline.c.lead_id),
                          (tasks, tasks.c.lead_id), (changes, changes.c.lead_id),
                          (proposals, proposals.c.lead_id), (contact_links, contact_links.c.lead_id)):
        result: Any = s.execute(delete(table).where(column == lead_id))
        removed += int(result.rowcount or 0)
    s.execute(delete(outbox).where(outbox.c.lead_id == lead_id, outbox.c.status == "pending",
                                   outbox.c.op != "erase"))
    return removed


# ---------------------------------------------------------------------------------------------------
# Proposals

class ProposalLine(NamedTuple):
    """A line of a proposal: a plan or an add-on (`kind`), its price, and the rule that chose it."""

    kind: str
    key: str
    name: str
    price: float
    rule: str

    def as_json(self) -> JsonObject:
        return {"kind": self.kind, "key": self.key, "name": self.name, "price": self.price, "rule": self.rule}


@dataclass(frozen=True, slots=True)
class Proposal:
    """A proposal (a `crm_sync_proposals` row, its lines and pathways decoded, times aware UTC).
    `status`: generated | sent; `message_id`: the email that sent it."""

    id: str
    lead_id: str
    deal_id: str | None
    plan: str
    lines: tuple[ProposalLine, ...]
    pathways: tuple[str, ...]
    total: float
    currency: str
    html: str
    status: str
    task_id: str | None
    message_id: str | None
    requested_by: str
    created_at: datetime
    valid_until: datetime
    sent_at: datetime | None


def _proposal_row(row: Any) -> Proposal:
    return Proposal(
        id=row.id, lead_id=row.lead_id, deal_id=row.deal_id, plan=row.plan,
        lines=tuple(ProposalLine(ln["kind"], ln["key"], ln["name"], ln["price"], ln["rule"])
                    for ln in json.loads(row.lines)),
        pathways=tuple(json.loads(row.pathways)), total=row.total, currency=row.currency, html=row.html,
        status=row.status, task_id=row.task_id, message_id=row.message_id, requested_by=row.requested_by,
        created_at=aware(row.created_at) or row.created_at, valid_until=aware(row.valid_until) or row.valid_until,
        sent_at=aware(row.sent_at))


def insert_proposal(s: Session, p: Proposal) -> None:
    s.execute(insert(proposals).values(
        id=p.id, lead_id=p.lead_id, deal_id=p.deal_id, plan=p.plan, lines=json.dumps([ln.as_json() for ln in p.lines]),
        pathways=json.dumps(list(p.pathways)), total=p.total, currency=p.currency, html=p.html, status=p.status,
        task_id=p.task_id, message_id=p.message_id, requested_by=p.requested_by, created_at=p.created_at,
        valid_until=p.valid_until, sent_at=p.sent_at))


def get_proposal(s: Session, proposal_id: str) -> Proposal | None:
    row = s.execute(select(proposals).where(proposals.c.id == proposal_id)).first()
    return _proposal_row(row) if row else None


def proposal_for_deal(s: Session, deal_id: str) -> Proposal | None:
    row = s.execute(select(proposals).where(proposals.c.deal_id == deal_id)).first()
    return _proposal_row(row) if row else None


def lead_proposals(s: Session, lead_id: str) -> list[Proposal]:
    rows = s.execute(select(proposals).where(proposals.c.lead_id == lead_id)
                     .order_by(proposals.c.created_at, proposals.c.id)).all()
    return [_proposal_row(r) for r in rows]


def proposal_sent(s: Session, proposal_id: str, *, message_id: str, at: datetime) -> None:
    """The proposal went out in this email."""
    s.execute(update(proposals).where(proposals.c.id == proposal_id).values(status="sent", message_id=message_id,
                                                                            sent_at=at))


def iter_chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


CLAIM_LEASE = timedelta(minutes=15)


def requeue_running(s: Session, replica: str, now: datetime) -> None:
    """Jobs this replica had claimed when it died, and jobs whose claim is older than the lease (their
    replica died and has not come back), go back to pending, their attempt counted as made. A live
    replica's claims are left alone: it is performing them."""
    s.execute(update(outbox).where(
        outbox.c.status == "running",
        or_(outbox.c.claimed_by.is_(None), outbox.c.claimed_by == replica, outbox.c.claimed_at < now - CLAIM_LEASE))
        .values(status="pending", attempts=outbox.c.attempts + 1, claimed_by=None, claimed_at=None))
