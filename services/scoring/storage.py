"""scoring's SQL: leads, events, score changes, audit and the outbox. Functions over a session (or the
ingest path's Core connection); the application modules (`app/`) decide what to write and hold the
transactions. The row-to-dict readers live here, as they know the stored encoding.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeAlias

from opentelemetry.propagate import inject
from sqlalchemy import ColumnElement, Connection, Row, and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.orm import Session

from nurture import busmessage, jsoncodec, limits, times
from nurture.busmessage import BusMessage, LeadSnapshot
from nurture.db import DriverWrites
from nurture.jsontypes import JsonValue
from services.scoring.domain.records import LeadRecord, OutboxRow
from services.scoring.domain.rules import derive_counters
from services.scoring.tables import audit, events, leads, models, outbox, score_changes

# Rows are locked in primary-key order on every path that locks more than one lead: two transactions
# locking overlapping sets in different orders deadlock on PostgreSQL (the order of an IN list is not
# the order rows are locked in; ORDER BY is, as LockRows sits above the sort). The ingest path's reads
# and writes go on the driver's cursor (DriverWrites), pipelined on PostgreSQL.
_LEADS_FOR_UPDATE = (select(leads).where(leads.c.id.in_(bindparam("ids", expanding=True))).order_by(leads.c.id)
                     .with_for_update())
# Built once, its list a parameter: a fresh IN clause per batch cost a cache key each time.
_LEADS_BY_EMAILS = select(leads).where(func.lower(leads.c.email).in_(bindparam("emails", expanding=True)))
_EVENT_COLUMNS = ("id", "lead_id", "type", "properties", "occurred_at", "received_at", "idempotency_key", "source",
                  "score_delta", "signals")
_CHANGE_COLUMNS = ("lead_id", "at", "delta", "score_after", "rule", "reason", "event_id", "model_version")
_AUDIT_COLUMNS = ("lead_id", "at", "action", "source", "details", "erased")
_SAVED_LEAD_COLUMNS = ("score", "counters", "recent", "interests", "segment", "lifecycle_stage", "last_engaged_at",
                       "lapse_due_at", "consent", "version", "updated_at")


# A row of values for one of DriverWrites' prebuilt statements, in the order of its columns (the
# `_*_COLUMNS` it is written with): a tuple, as the driver takes it, built per event on the ingest path.
SqlRow: TypeAlias = tuple[object, ...]


class KeyedEvent(NamedTuple):
    """A stored event found by its idempotency key."""

    event_id: str
    lead_id: str
    type: str


class ModelVersionRow(NamedTuple):
    version: int
    status: str
    created_at: datetime
    published_at: datetime | None


_aware = times.utc_or_none  # SQLite hands back naive datetimes; every stored time is UTC
_iso = times.rfc3339_or_none


def loads(text: str | None, what: str = "value") -> JsonValue:
    # Strict: a stored text that is not I-JSON (a lone surrogate, NaN) reads as a marked placeholder.
    return limits.read_json(text, what=what)



def lead_snapshot(row: Row[Any] | Mapping[str, Any], now: datetime | None = None) -> LeadSnapshot:
    """A lead as every consumer sees it (the bus snapshot and the API body)."""
    m = row._mapping if isinstance(row, Row) else row
    counters = loads(m["counters"])
    last = _aware(m["last_engaged_at"])
    if now is not None:
        counters.update(derive_counters(loads(m["recent"]), counters.get("totals", {}), last, now))
    public_counters = {k: v for k, v in counters.items() if k not in ("totals", "fired_today")}
    return LeadSnapshot(
        id=m["id"],
        email=m["email"],
        first_name=m["first_name"],
        last_name=m["last_name"],
        segment=m["segment"],
        timezone=m["timezone"],
        locale=m["locale"],
        # What readers are shown must serialise again: a stored value past the limits degrades.
        attributes=limits.readable(loads(m["attributes"], "attributes"), what="attributes"),
        consent=limits.readable(loads(m["consent"], "consent"), what="consent"),
        score=m["score"],
        grade=m["grade"],
        lifecycle_stage=m["lifecycle_stage"],
        counters=public_counters,
        interests=loads(m["interests"]),
        crm_id=m["crm_id"],
        version=m["version"],
        created_at=_iso(m["created_at"]),
        updated_at=_iso(m["updated_at"]),
        last_engaged_at=_iso(last),
    )



def internal(row: Row[Any] | Mapping[str, Any]) -> LeadRecord:
    """A lead row with its JSON decoded, for the model."""
    m = row._mapping if isinstance(row, Row) else row
    return {
        "id": m["id"], "email": m["email"], "first_name": m["first_name"], "last_name": m["last_name"],
        "segment": m["segment"], "score": m["score"], "grade": m["grade"], "lifecycle_stage": m["lifecycle_stage"],
        "timezone": m["timezone"], "locale": m["locale"], "crm_id": m["crm_id"], "version": m["version"],
        "attributes": loads(m["attributes"]),
        "consent": loads(m["consent"]),
        "counters": loads(m["counters"]),
        "recent": loads(m["recent"]),
        "interests": loads(m["interests"]),
        "last_engaged_at": _aware(m["last_engaged_at"]),
        "lapse_due_at": _aware(m["lapse_due_at"]),
        "created_at": _aware(m["created_at"]),
    }

# -- leads ---------------------------------------------------------------------------------------------

def lock_lead(s: Session, lead_id: str) -> Row[Any] | None:
    return s.execute(select(leads).where(leads.c.id == lead_id).with_for_update()).first()


def lead_by_email(s: Session, email: str) -> Row[Any] | None:
    # Addresses that differ only in case are one mailbox.
    return s.execute(select(leads).where(func.lower(leads.c.email) == email.lower()).limit(1)).first()


def add_consent_audit(s: Session, lead_id: str, now: datetime, source: str, channel: str, given: bool) -> None:
    s.execute(insert(audit).values(dict(zip(_AUDIT_COLUMNS, consent_audit_row(lead_id, now, source, channel, given),
                                            strict=True))))


def consent_audit_row(lead_id: str, now: datetime, source: str, channel: str, given: bool) -> SqlRow:
    """A consent change's audit entry, a row of `_AUDIT_COLUMNS`."""
    return (lead_id, now, "consent_given" if given else "consent_withdrawn", source,
            jsoncodec.dumps({"channel": channel, "value": given}), False)


def update_lead(s: Session, lead_id: str, changes: Mapping[str, object]) -> None:
    s.execute(update(leads).where(leads.c.id == lead_id).values(dict(changes)))


def leads_after(s: Session, after: str, limit: int, *, lock: bool) -> list[Row[Any]]:
    """The next `limit` leads after the id `after`, in id order; locked in that order with `lock`."""
    query = select(leads).where(leads.c.id > after).order_by(leads.c.id).limit(limit)
    if lock:
        query = query.with_for_update()
    return list(s.execute(query).all())


def lock_lead_rows(s: Session, ids: Sequence[str]) -> list[Row[Any]]:
    """The leads, locked in key order (see _LEADS_FOR_UPDATE)."""
    return list(s.execute(_LEADS_FOR_UPDATE, {"ids": list(ids)}).all())


# The advisory-lock space of new leads' emails (two-key form, as nurture.partitions' spaces).
_EMAIL_LOCK_SPACE = zlib.crc32(b"scoring:lead-email") - (1 << 31)
_LOCK_EMAILS = text("SELECT pg_advisory_xact_lock(:space, k) FROM unnest(CAST(:keys AS int[])) AS k")


def lock_emails(s: Session, emails: Sequence[str]) -> None:
    """On PostgreSQL, hold these addresses (whatever their case) to the end of the transaction, before
    reading the leads that have them: two transactions creating a lead for one new address (two CRM
    webhooks of a new contact at two crm_sync replicas) take turns, and the second matches the first's
    lead instead of making a second one (`scoring_leads.email` is not unique: leads from before the
    one-person-one-lead rule may share one). Keys in ascending order, so two batches never deadlock;
    a hash collision only makes two addresses wait for each other. SQLite has one writer already."""
    if not emails or s.get_bind().dialect.name != "postgresql":
        return
    keys = sorted({zlib.crc32(e.lower().encode()) - (1 << 31) for e in emails})
    s.execute(_LOCK_EMAILS, {"space": _EMAIL_LOCK_SPACE, "keys": keys})


def leads_by_emails(s: Session, emails: Sequence[str]) -> list[Row[Any]]:
    """Every lead whose email is one of these, whatever the case (one IN over the lower(email) index)."""
    return list(s.execute(_LEADS_BY_EMAILS, {"emails": sorted({e.lower() for e in emails})}).all())


_LEAD_COLUMNS = tuple(leads.c.keys())


def insert_leads(writes: DriverWrites, conn: Connection, rows: Sequence[Mapping[str, object]]) -> None:
    """New leads, every column given (a missing one is a KeyError, not a silent NULL)."""
    writes.insert(conn, leads, _LEAD_COLUMNS, [tuple(r[c] for c in _LEAD_COLUMNS) for r in rows])


def update_leads(writes: DriverWrites, conn: Connection, columns: Sequence[str],
                 rows: Sequence[Mapping[str, object]]) -> None:
    """These columns of these leads, to the rows' values (one executemany)."""
    writes.update(conn, leads, columns, "id", [(*(r[c] for c in columns), r["id"]) for r in rows])


def lead_rows(s: Session, ids: Sequence[str]) -> list[Row[Any]]:
    return list(s.execute(select(leads).where(leads.c.id.in_(list(ids)))).all())


def _starts_with(s: Session, column: ColumnElement[Any], prefix: str) -> ColumnElement[bool]:
    """lower(column) starts with `prefix` (lowercase), as a range an index on lower(column) serves on
    both databases (a LIKE on an expression uses no index on SQLite). The range is the prefix's only
    in code point order: PostgreSQL compares in "C" for it, as its prefix indexes are built."""
    key: ColumnElement[Any] = func.lower(column)
    if s.get_bind().dialect.name == "postgresql":
        key = key.collate("C")
    last = ord(prefix[-1])
    if last >= 0x10FFFF:
        return key.startswith(prefix, autoescape=True)
    return and_(key >= prefix, key < prefix[:-1] + chr(last + 1))


def page_of_leads(s: Session, *, segment: str, min_score: int | None, stage: str, email: str, cursor: str,
                  limit: int, q: str = "") -> list[Row[Any]]:
    """Up to `limit + 1` leads after `cursor` in id order (one more says there is a next page); `q`:
    those whose email, first or last name starts with it, in any case."""
    query = select(leads).order_by(leads.c.id).limit(limit + 1)
    if segment:
        query = query.where(leads.c.segment == segment)
    if min_score is not None:
        query = query.where(leads.c.score >= min_score)
    if stage:
        query = query.where(leads.c.lifecycle_stage == stage)
    if email:
        query = query.where(leads.c.email == email)
    if q:
        prefix = q.lower()
        query = query.where(or_(*(_starts_with(s, c, prefix) for c in (leads.c.email, leads.c.first_name,
                                                                      leads.c.last_name))))
    if cursor:
        query = query.where(leads.c.id > cursor)
    return list(s.execute(query).all())


def erase_lead(s: Session, lead_id: str, now: datetime, email_hash: str) -> None:
    """Deletes the lead's record; its audit stays, emptied, with one `erased` entry (by email hash)."""
    s.execute(delete(events).where(events.c.lead_id == lead_id))
    s.execute(delete(score_changes).where(score_changes.c.lead_id == lead_id))
    s.execute(update(audit).where(audit.c.lead_id == lead_id).values(details="{}", erased=True))
    s.execute(insert(audit).values(lead_id=lead_id, at=now, action="erased", source="api",
                                   details=jsoncodec.dumps({"email_hash": email_hash}), erased=True))
    s.execute(delete(leads).where(leads.c.id == lead_id))


# -- the ingest path (Core connection, prebuilt statements, the driver's cursor) ------------------------

def delete_outbox(writes: DriverWrites, s: Connection, seqs: Sequence[int]) -> None:
    writes.delete(s, outbox, "seq", seqs)


def events_by_key(writes: DriverWrites, s: Connection, keys: Sequence[str]) -> dict[str, KeyedEvent]:
    """idempotency key → the stored event with this key."""
    return {row["idempotency_key"]: KeyedEvent(row["id"], row["lead_id"], row["type"]) for row in writes.select(
        s, events, ("idempotency_key", "id", "lead_id", "type"), "idempotency_key", keys)}


def leads_for_update(writes: DriverWrites, s: Connection, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The leads' rows, locked in key order."""
    return writes.select(s, leads, _LEAD_COLUMNS, "id", ids, lock=True)


def insert_consent_audits(writes: DriverWrites, s: Connection, rows: list[SqlRow]) -> None:
    """Rows of `consent_audit_row`."""
    writes.insert(s, audit, _AUDIT_COLUMNS, rows)


def insert_events(writes: DriverWrites, s: Connection, rows: list[SqlRow]) -> None:
    """Rows of `_EVENT_COLUMNS`."""
    writes.insert(s, events, _EVENT_COLUMNS, rows)


def insert_score_changes(writes: DriverWrites, s: Connection, rows: list[SqlRow]) -> None:
    """Rows of `_CHANGE_COLUMNS`."""
    writes.insert(s, score_changes, _CHANGE_COLUMNS, rows)


def scored_lead_row(lead: LeadRecord, lapse: datetime | None, now: datetime) -> SqlRow:
    """A scored lead as a row of `_SAVED_LEAD_COLUMNS` plus its id, for `save_scored_leads`."""
    return (lead["score"], jsoncodec.dumps(lead["counters"]), jsoncodec.dumps(lead["recent"]),
            jsoncodec.dumps(lead["interests"]), lead["segment"], lead["lifecycle_stage"], lead["last_engaged_at"],
            lapse, jsoncodec.dumps(lead["consent"]), lead["version"], now, lead["id"])


def save_scored_leads(writes: DriverWrites, s: Session | Connection, rows: list[SqlRow]) -> None:
    """One executemany UPDATE for every lead the batch touched (the batch's hot spot otherwise)."""
    if not rows:
        return
    writes.update(s.connection() if isinstance(s, Session) else s, leads, _SAVED_LEAD_COLUMNS, "id", rows)


def insert_outbox(writes: DriverWrites, s: Session | Connection, messages: Sequence[BusMessage],
                  traces: Sequence[str | None] = ()) -> list[OutboxRow]:
    """Insert the messages into the outbox; returns the rows as published (see `insert_outbox_later`)."""
    return insert_outbox_later(writes, s, messages, traces)()


def insert_outbox_later(writes: DriverWrites, s: Session | Connection, messages: Sequence[BusMessage],
                        traces: Sequence[str | None] = ()) -> Callable[[], list[OutboxRow]]:
    """Insert the messages into the outbox; calling the result gives the rows as published (in a
    pipelined transaction, only after its commit: their seqs come back with it).

    The trace of the request that caused a message travels with it (W3C traceparent), so
    publishing and the consumers' work join the same trace: an event's own (`traces[i]`, when its
    caller sent one with the event, as the gateway does for events it sends together), else the
    current one."""
    if not messages:
        return lambda: []
    carrier: dict[str, str] = {}
    inject(carrier)
    current = jsoncodec.dumps(carrier) if carrier else None
    values = []
    for i, m in enumerate(messages):
        own = traces[i] if i < len(traces) else None
        values.append((m.lead_id, busmessage.encode(m), jsoncodec.dumps({"traceparent": own}) if own else current))
    # One multi-row INSERT per chunk: a chunk's seqs, ascending, are its rows in order.
    seqs = writes.insert_later(s.connection() if isinstance(s, Session) else s, outbox,
                               ("lead_id", "payload", "trace"), values, returning="seq")
    return lambda: [OutboxRow(seq, *v) for seq, v in zip(seqs(), values, strict=True)]


# -- outbox, decay, history -------------------------------------------------------------------------------

def pending_outbox(s: Session, limit: int, after: int = 0, up_to: int | None = None) -> list[OutboxRow]:
    """The outbox rows in commit order, published as stored: those with a seq above `after` and at most
    `up_to`."""
    query = select(outbox.c.seq, outbox.c.lead_id, outbox.c.payload, outbox.c.trace).where(outbox.c.seq > after)
    if up_to is not None:
        query = query.where(outbox.c.seq <= up_to)
    rows = s.execute(query.order_by(outbox.c.seq).limit(limit)).all()
    return [OutboxRow(r.seq, r.lead_id, r.payload, r.trace) for r in rows]


def outbox_high(s: Session) -> int | None:
    """The highest seq in the outbox (None when it is empty)."""
    return s.execute(select(func.max(outbox.c.seq))).scalar()


def outbox_of_leads(writes: DriverWrites, s: Connection, lead_ids: Sequence[str]) -> list[OutboxRow]:
    """The leads' rows still in the outbox, in seq order (per lead, their commit order: a row's seq is
    drawn while its transaction holds the lead's lock). No index on lead_id (every ingest would
    maintain it): the outbox holds only what is not yet published and deleted, a few hundred rows
    while Redis answers, and this runs for a retried event and for a lead upsert of known leads."""
    rows = writes.select(s, outbox, ("seq", "lead_id", "payload", "trace"), "lead_id", lead_ids)
    return sorted((OutboxRow(r["seq"], r["lead_id"], r["payload"], r["trace"]) for r in rows), key=lambda r: r.seq)


def mark_published(s: Session, seqs: Sequence[int]) -> None:
    s.execute(delete(outbox).where(outbox.c.seq.in_(list(seqs))))


def next_lapse(s: Session) -> datetime | None:
    return _aware(s.execute(select(func.min(leads.c.lapse_due_at))).scalar())


def due_lapses(s: Session, now: datetime, limit: int) -> list[Row[Any]]:
    # SKIP LOCKED: a lead being written now (an event, an upsert) is decayed by the next sweep;
    # the sweep never waits for a lock, so it cannot deadlock with ingest's key-ordered locks.
    return list(s.execute(select(leads).where(and_(leads.c.lapse_due_at.is_not(None), leads.c.lapse_due_at <= now))
                          .order_by(leads.c.lapse_due_at).limit(limit).with_for_update(skip_locked=True)).all())


def add_score_change(s: Session, *, lead_id: str, at: datetime, delta: int, score_after: int, rule: str,
                     reason: str, event_id: str | None, model_version: int) -> None:
    s.execute(insert(score_changes).values(
        lead_id=lead_id, at=at, delta=delta, score_after=score_after, rule=rule,
        reason=reason, event_id=event_id, model_version=model_version))


def record_decay(s: Session, lead_id: str, score: int, lapse_due_at: datetime, now: datetime) -> None:
    s.execute(update(leads).where(leads.c.id == lead_id).values(
        score=score, lapse_due_at=lapse_due_at, updated_at=now, version=leads.c.version + 1))


def score_history(s: Session, lead_id: str, limit: int) -> list[Row[Any]]:
    return list(s.execute(select(score_changes).where(score_changes.c.lead_id == lead_id)
                          .order_by(score_changes.c.id.desc()).limit(limit)).all())[::-1]


def timeline_rows(s: Session, lead_id: str, limit: int
                  ) -> tuple[list[Row[Any]], list[Row[Any]], list[Row[Any]]]:
    """The lead's events (by time), score changes and audit notes (by id), `limit` of each."""
    evs = s.execute(select(events).where(events.c.lead_id == lead_id)
                    .order_by(events.c.occurred_at, events.c.received_at).limit(limit)).all()
    changes = s.execute(select(score_changes).where(score_changes.c.lead_id == lead_id)
                        .order_by(score_changes.c.id).limit(limit)).all()
    notes = s.execute(select(audit).where(audit.c.lead_id == lead_id).order_by(audit.c.id).limit(limit)).all()
    return list(evs), list(changes), list(notes)


# -- scoring model versions ---------------------------------------------------------------------------------

def newest_model_version(s: Session) -> int | None:
    return s.execute(select(func.max(models.c.version))).scalar()


def published_model_version(s: Session) -> int | None:
    return s.execute(select(models.c.version).where(models.c.status == "published")).scalar()


def model_definition(s: Session, version: int) -> str | None:
    return s.execute(select(models.c.definition).where(models.c.version == version)).scalar()


def model_definitions(s: Session) -> list[str]:
    return list(s.execute(select(models.c.definition).order_by(models.c.version)).scalars())


def model_version_rows(s: Session) -> list[ModelVersionRow]:
    return [ModelVersionRow(*r) for r in s.execute(
        select(models.c.version, models.c.status, models.c.created_at, models.c.published_at)
        .order_by(models.c.version)).all()]


def insert_model(s: Session, *, version: int, status: str, definition: str, created_at: datetime,
                 published_at: datetime | None = None) -> None:
    values: dict[str, object] = {"version": version, "status": status, "definition": definition,
                              "created_at": created_at}
    if published_at is not None:
        values["published_at"] = published_at
    s.execute(models.insert().values(values))


def retire_published_model(s: Session) -> None:
    s.execute(update(models).where(models.c.status == "published").values(status="retired"))


def mark_model_published(s: Session, version: int, now: datetime) -> None:
    s.execute(update(models).where(models.c.version == version).values(status="published", published_at=now))
