"""SQL record of the journeys service (tables prefixed journeys_): definitions with versions, one state
row per lead, enrolments, step runs (unique by dedupe key), explained transitions, engagement tallies
and the ids of bus messages already applied; and the step counters derived from that record.

The step counters (`journeys_step_counts`: by journey, UTC day, step, measure, reason) are added to in
the same transaction as the records they count, only for the rows actually inserted (a replayed step
run or engagement finds its key taken and counts nothing), and taken from when a lead's records are
erased: so they always equal a recount of the record, survive a crash with it, and can be derived again
from it (`rebuild_counters`; the service does so at start when `COUNTERS_VERSION` changed). The
journey analytics read them instead of grouping every record per request. Blocking code: call through
Database.run."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    Date,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from nurture import jsoncodec, times
from nurture.partitions import partitions_table
from services.journeys.domain.state import LIVE, Enrollment, LeadState, Outcome
from services.journeys.domain.step_counts import COUNTED_TRANSITIONS, Tally


class Base(DeclarativeBase):
    pass


class Definition(Base):
    __tablename__ = "journeys_definitions"
    __table_args__ = (UniqueConstraint("key", "version", name="uq_journeys_definitions_key_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # draft | published | retired | archived
    source: Mapped[str] = mapped_column(String(16))  # playbook | api
    document: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class LeadRow(Base):
    __tablename__ = "journeys_leads"
    lead_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(Text)
    inactive_due: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    inactive_token: Mapped[int] = mapped_column(Integer, default=0)
    date_timers: Mapped[str] = mapped_column(Text, default="{}")  # unfired date-relative entries
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EnrollmentRow(Base):
    __tablename__ = "journeys_enrollments"
    __table_args__ = (Index("ix_journeys_enrollments_members", "journey", "status", "stage", "lead_id"),
                      Index("ix_journeys_enrollments_steps", "journey", "status", "step"),
                      Index("ix_journeys_enrollments_due", "status", "due"))
    lead_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    ekey: Mapped[str] = mapped_column(String(200), primary_key=True)
    journey: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    instance: Mapped[str] = mapped_column(String(128), default="")
    status: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str | None] = mapped_column(String(64), nullable=True)
    step: Mapped[str | None] = mapped_column(String(64), nullable=True)
    due: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    token: Mapped[int] = mapped_column(Integer)
    side_pending: Mapped[int] = mapped_column(Integer, default=0)
    entered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(64), nullable=True)
    data: Mapped[str] = mapped_column(Text)


class StepRunRow(Base):
    __tablename__ = "journeys_step_runs"
    __table_args__ = (Index("ix_journeys_step_runs_journey_at", "journey", "at"),
                      Index("ix_journeys_step_runs_step_lead", "journey", "step", "status", "lead_id"),
                      Index("ix_journeys_step_runs_lead", "lead_id"),
                      Index("ix_journeys_step_runs_message", "message_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dedupe_key: Mapped[str] = mapped_column(String(400), unique=True)
    lead_id: Mapped[str] = mapped_column(String(128))
    ekey: Mapped[str] = mapped_column(String(200))
    journey: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    step: Mapped[str] = mapped_column(String(64))
    step_type: Mapped[str] = mapped_column(String(16))
    occurrence: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stage: Mapped[str | None] = mapped_column(String(64), nullable=True)
    message_id: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class TransitionRow(Base):
    __tablename__ = "journeys_transitions"
    __table_args__ = (Index("ix_journeys_transitions_lead", "lead_id", "id"),
                      Index("ix_journeys_transitions_journey_at", "journey", "at"),
                      Index("ix_journeys_transitions_journey_type", "journey", "type", "step_from", "rule"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    lead_id: Mapped[str] = mapped_column(String(128))
    ekey: Mapped[str] = mapped_column(String(200))
    journey: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    type: Mapped[str] = mapped_column(String(32))
    summary: Mapped[str] = mapped_column(Text)
    step_from: Mapped[str | None] = mapped_column(String(64), nullable=True)
    step_to: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stage: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rule: Mapped[str | None] = mapped_column(String(128), nullable=True)
    facts: Mapped[str] = mapped_column(Text, default="{}")


class EngagementRow(Base):
    __tablename__ = "journeys_engagements"
    __table_args__ = (Index("ix_journeys_engagements_journey_at", "journey", "at"),
                      Index("ix_journeys_engagements_step_lead", "journey", "step", "type", "lead_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    lead_id: Mapped[str] = mapped_column(String(128))
    journey: Mapped[str] = mapped_column(String(64))
    step: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StepCountRow(Base):
    """How many records of a journey fall in one cell (domain.step_counts): the funnel's counts kept
    as the records are written, by UTC day so a report over a range reads whole days from here."""
    __tablename__ = "journeys_step_counts"
    journey: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    step: Mapped[str] = mapped_column(String(64), primary_key=True)
    measure: Mapped[str] = mapped_column(String(16), primary_key=True)
    reason: Mapped[str] = mapped_column(String, primary_key=True)
    n: Mapped[int] = mapped_column(Integer)


class MetaRow(Base):
    """Which derivation made the derived tables (`COUNTERS_VERSION`)."""
    __tablename__ = "journeys_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


COUNTERS_VERSION = "1"  # bump when the counters count differently: the service derives them again at start


class CampaignRow(Base):
    """A content-calendar campaign that has run (or was skipped), so it runs once per deployment."""
    __tablename__ = "journeys_campaigns"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # done | expired
    leads: Mapped[int] = mapped_column(Integer, default=0)
    done_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# The fencing epoch of each partition of the leads (nurture.partitions; the replicas' work loop).
PARTITIONS = partitions_table(Base.metadata, "journeys")


class MigrationRow(Base):
    """A publish that moves the journey's live leads to the published version (`migrate`): recorded with the
    publication, carried out for each partition by the replica that owns it (the runner's run_migrations)."""
    __tablename__ = "journeys_migrations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    journey: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    mapping: Mapped[str] = mapped_column(Text)  # JSON {old step: new step}
    # migrate: move the live leads to `version`; archive: the journey was archived, its live leads exit.
    kind: Mapped[str] = mapped_column(String(16), default="migrate", server_default="migrate")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MigrationDoneRow(Base):
    """A migration carried out for one partition's leads (ALL_PARTITIONS: by a process that owns them all)."""
    __tablename__ = "journeys_migrations_done"
    migration_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    part: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    done_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


ALL_PARTITIONS = -1


def add_migration(session: Session, *, journey: str, version: int, mapping: dict[str, str], now: datetime,
                  kind: str = "migrate") -> int:
    row = MigrationRow(journey=journey, version=version, mapping=json.dumps(mapping, sort_keys=True), created_at=now,
                       kind=kind)
    session.add(row)
    session.flush()
    return int(row.id)


def migrations_pending(session: Session) -> tuple[list[MigrationRow], set[tuple[int, int]]]:
    """Every recorded migration, oldest first, and the (migration, partition) pairs carried out."""
    done = {(int(m), int(p)) for m, p in session.execute(select(MigrationDoneRow.migration_id, MigrationDoneRow.part))}
    return list(session.scalars(select(MigrationRow).order_by(MigrationRow.id))), done


def mark_migrated(session: Session, migration_id: int, parts: list[int], now: datetime) -> None:
    for part in parts:
        session.merge(MigrationDoneRow(migration_id=migration_id, part=part, done_at=now))


def campaigns_done(session: Session) -> set[str]:
    return set(session.scalars(select(CampaignRow.id)))


def mark_campaign(session: Session, campaign_id: str, status: str, leads: int, now: datetime) -> None:
    session.merge(CampaignRow(id=campaign_id, status=status, leads=leads, done_at=now))


def lead_ids_after(session: Session, after: str, limit: int) -> list[str]:
    """Lead ids in key order, a page at a time (the calendar's walk over every lead)."""
    return list(session.scalars(select(LeadRow.lead_id).where(LeadRow.lead_id > after)
                                .order_by(LeadRow.lead_id).limit(limit)))


class ProcessedRow(Base):
    __tablename__ = "journeys_processed"
    message_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


_utc = times.utc_or_none  # SQLite hands back naive datetimes; every time here is UTC


def _insert(session: Session, table: Any) -> Any:
    return (pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert)(table)


# -- definitions ------------------------------------------------------------------------------------

def definitions(session: Session) -> list[Definition]:
    return list(session.scalars(select(Definition).order_by(Definition.key, Definition.version)))


def definitions_signature(session: Session) -> tuple[int, int, str]:
    """Changes whenever a version is stored, published, archived or brought back (rows, newest id, newest
    publication and a digest of every version's status): how a replica learns cheaply that another one
    changed the definitions. The table holds a few rows per journey, so reading the statuses is small."""
    count, newest, published = session.execute(select(func.count(Definition.id), func.max(Definition.id),
                                                      func.max(Definition.published_at))).one()
    statuses = ",".join(f"{i}:{st}" for i, st in session.execute(select(Definition.id, Definition.status)
                                                                  .order_by(Definition.id)))
    digest = hashlib.sha256(statuses.encode()).hexdigest()[:16]
    return int(count or 0), int(newest or 0), f"{published or ''}|{digest}"


def add_definition(session: Session, *, key: str, document: dict[str, Any], source: str, now: datetime,
                   publish: bool) -> Definition:
    latest = session.scalar(select(func.max(Definition.version)).where(Definition.key == key)) or 0
    row = Definition(key=key, version=latest + 1, status="draft", source=source,
                     document=json.dumps(document, sort_keys=True), created_at=now)
    session.add(row)
    session.flush()
    if publish:
        mark_published(session, key=key, version=row.version, now=now)
    return row


def mark_published(session: Session, *, key: str, version: int, now: datetime) -> None:
    """Publishing a version brings an archived journey back: the archived version is retired like the live one."""
    for row in session.scalars(select(Definition).where(Definition.key == key)):
        if row.version == version:
            row.status, row.published_at = "published", now
        elif row.status in ("published", "archived"):
            row.status = "retired"


def mark_archived(session: Session, *, key: str, archived: bool, now: datetime) -> tuple[int, bool] | None:
    """Archive the journey's published version (archived) or publish its archived one again (not archived);
    (the version, whether anything changed), or None when the journey has neither a published nor an
    archived version (never published: nothing to archive or bring back). An archive is recorded as a
    migration of kind `archive`, with the status change, so every replica exits the live leads it owns."""
    rows = list(session.scalars(select(Definition).where(Definition.key == key)))
    live = next((r for r in rows if r.status == "published"), None)
    shelved = next((r for r in rows if r.status == "archived"), None)
    if archived:
        if live is None:
            return (shelved.version, False) if shelved is not None else None
        live.status = "archived"
        add_migration(session, journey=key, version=live.version, mapping={}, now=now, kind="archive")
        return live.version, True
    if shelved is None:
        return (live.version, False) if live is not None else None
    shelved.status, shelved.published_at = "published", now
    return shelved.version, True


# -- lead state -------------------------------------------------------------------------------------

def load_states(session: Session, lead_ids: list[str]) -> dict[str, LeadState]:
    """Lead states by id, two queries per 500 leads (unknown ids are absent)."""
    out: dict[str, LeadState] = {}
    for i in range(0, len(lead_ids), 500):
        chunk = lead_ids[i:i + 500]
        enrollments: dict[str, list[Enrollment]] = {}
        for data, lead_id in session.execute(select(EnrollmentRow.data, EnrollmentRow.lead_id)
                                             .where(EnrollmentRow.lead_id.in_(chunk))):
            enrollments.setdefault(lead_id, []).append(Enrollment.from_json(json.loads(data)))
        for lead_id, state in session.execute(select(LeadRow.lead_id, LeadRow.state).where(LeadRow.lead_id.in_(chunk))):
            out[lead_id] = LeadState.from_json(json.loads(state), enrollments.get(lead_id, []))
    return out


def leads_present(session: Session, lead_ids: list[str]) -> set[str]:
    """Which of these leads have a state stored (one query per 500)."""
    found: set[str] = set()
    unique = sorted(set(lead_ids))
    for i in range(0, len(unique), 500):
        found.update(session.scalars(select(LeadRow.lead_id).where(LeadRow.lead_id.in_(unique[i:i + 500]))))
    return found


def load_state(session: Session, lead_id: str) -> LeadState | None:
    return load_states(session, [lead_id]).get(lead_id)


def processed_among(session: Session, message_ids: list[str]) -> set[str]:
    """Which of these bus message ids were applied already (one query per 500, not one per message)."""
    found: set[str] = set()
    for i in range(0, len(message_ids), 500):
        chunk = message_ids[i:i + 500]
        found.update(session.scalars(select(ProcessedRow.message_id).where(ProcessedRow.message_id.in_(chunk))))
    return found


class Writes:
    """Everything one transaction writes, gathered across leads and written with one statement per
    table (upserts for state, inserts for the record): the ORM's per-row round trips were the
    service's bottleneck on SQLite.

    A lead's state row and its touched enrolments' rows are encoded at the flush, from the objects as
    they stand then, not at every `add`: a bus batch adds a lead once per message (eight times a lead in
    `bench/ingest.py`'s batches), and encoding the whole state each time, to keep only the last, was
    about a tenth of journeys' CPU under a batch load. Nothing changes a state between its last `add`
    and the flush, so the rows are the same."""

    def __init__(self) -> None:
        self.leads: dict[str, tuple[LeadState, datetime]] = {}
        self.enrollments: dict[tuple[str, str], Enrollment] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.transitions: list[dict[str, Any]] = []
        self.processed: dict[str, datetime] = {}

    def add(self, state: LeadState, out: Outcome, *, now: datetime, processed: str | None = None) -> None:
        self.leads[state.lead_id] = (state, now)
        for ekey in sorted(out.touched | out.side_due):
            e = state.enrollments.get(ekey)
            if e is not None:
                self.enrollments[(state.lead_id, ekey)] = e
        for r in out.runs:
            self.runs.setdefault(r.dedupe_key, dict(
                dedupe_key=r.dedupe_key, lead_id=r.lead_id, ekey=r.ekey, journey=r.journey, version=r.version,
                step=r.step, step_type=r.step_type, occurrence=r.occurrence, status=r.status, at=r.at,
                stage=r.stage, message_id=r.message_id, detail=r.detail[:2000]))
        self.transitions += [dict(lead_id=state.lead_id, ekey=t.ekey, journey=t.journey, version=t.version, at=t.at,
                                  type=t.type, summary=t.summary, step_from=t.step_from, step_to=t.step_to,
                                  stage=t.stage, rule=t.rule, facts=json.dumps(t.facts, default=str))
                             for t in out.transitions]
        if processed:
            self.processed[processed] = now

    def flush(self, session: Session) -> None:
        _upsert(session, LeadRow.__table__, [_lead_row(state, now) for state, now in self.leads.values()],
                ["lead_id"])
        _upsert(session, EnrollmentRow.__table__,
                [_enrollment_row(lead_id, ekey, e) for (lead_id, ekey), e in self.enrollments.items()],
                ["lead_id", "ekey"])
        tally = Tally()
        if self.runs:
            # Only the runs inserted now are counted: a replayed run's key is taken, it adds nothing.
            for key in session.scalars(_insert(session, StepRunRow.__table__).on_conflict_do_nothing(
                    index_elements=["dedupe_key"]).returning(StepRunRow.__table__.c.dedupe_key),
                    list(self.runs.values())):
                r = self.runs[key]
                tally.run(r["journey"], times.utc(r["at"]), r["step"], r["status"])
        if self.transitions:
            session.execute(insert(TransitionRow), self.transitions)
            for t in self.transitions:
                if t["type"] in COUNTED_TRANSITIONS:
                    tally.transition(t["journey"], times.utc(t["at"]), t["type"], step_from=t["step_from"],
                                     rule=t["rule"], facts=json.loads(t["facts"]))
        if self.processed:
            session.execute(_insert(session, ProcessedRow.__table__).on_conflict_do_nothing(
                index_elements=["message_id"]), [dict(message_id=k, at=v) for k, v in self.processed.items()])
        add_counts(session, tally)  # last: the counter rows are locked from here until the commit
        self.clear()

    def clear(self) -> None:
        self.leads.clear()
        self.enrollments.clear()
        self.runs.clear()
        self.transitions.clear()
        self.processed.clear()


def _lead_row(state: LeadState, now: datetime) -> dict[str, Any]:
    return dict(lead_id=state.lead_id, state=jsoncodec.dumps(state.to_json(), default=str),
                inactive_due=state.inactive_due, inactive_token=state.inactive_token,
                date_timers=jsoncodec.dumps({k: v for k, v in state.dates.items() if not v.get("fired")}),
                updated_at=now)


def _enrollment_row(lead_id: str, ekey: str, e: Enrollment) -> dict[str, Any]:
    return dict(lead_id=lead_id, ekey=ekey, journey=e.journey, version=e.version, instance=e.instance,
                status=e.status, stage=e.stage, step=e.step, due=e.due, token=e.token, side_pending=len(e.side),
                entered_at=e.entered_at, ended_at=e.ended_at, outcome=e.outcome,
                data=jsoncodec.dumps(e.to_json(), default=str))


def _upsert(session: Session, table: Any, rows: list[dict[str, Any]], keys: list[str]) -> None:
    if not rows:
        return
    stmt = _insert(session, table)
    stmt = stmt.on_conflict_do_update(index_elements=keys,
                                      set_={c: getattr(stmt.excluded, c) for c in rows[0] if c not in keys})
    session.execute(stmt, rows)


def save(session: Session, state: LeadState, out: Outcome, *, now: datetime,
         processed: str | None = None) -> None:
    """Persist one lead's state and what the engine recorded, in the caller's transaction."""
    writes = Writes()
    writes.add(state, out, now=now, processed=processed)
    writes.flush(session)


def prune_processed(session: Session, before: datetime) -> int:
    """Forget applied bus message ids older than `before` (redelivery happens within minutes)."""
    result = session.execute(delete(ProcessedRow).where(ProcessedRow.at < before))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def mark_processed(session: Session, message_id: str, now: datetime) -> None:
    session.execute(_insert(session, ProcessedRow.__table__).values(message_id=message_id, at=now)
                    .on_conflict_do_nothing(index_elements=["message_id"]))


def record_engagement(session: Session, *, event_id: str, lead_id: str, journey: str, step: str, etype: str,
                      at: datetime) -> None:
    inserted = session.scalar(_insert(session, EngagementRow.__table__).values(
        event_id=event_id, lead_id=lead_id, journey=journey, step=step, type=etype, at=at)
        .on_conflict_do_nothing(index_elements=["event_id"]).returning(EngagementRow.__table__.c.event_id))
    if inserted is not None:  # a redelivered event is in the record already, and in the counters
        tally = Tally()
        tally.engagement(journey, times.utc(at), step, etype)
        add_counts(session, tally)


def run_by_message(session: Session, message_id: str) -> StepRunRow | None:
    if not message_id:
        return None
    return session.scalar(select(StepRunRow).where(StepRunRow.message_id == message_id).limit(1))


def erase(session: Session, lead_id: str) -> int:
    """Delete the lead's rows; its records are taken from the counters first, which keep counting what
    is left in the record."""
    add_counts(session, _tally_records(session, lead_id=lead_id, sign=-1))
    removed = 0
    for table in (EnrollmentRow, StepRunRow, TransitionRow, EngagementRow, LeadRow):
        result = session.execute(delete(table).where(table.lead_id == lead_id))  # type: ignore[attr-defined]
        removed += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return removed


# -- queries ----------------------------------------------------------------------------------------

def lead_enrollments(session: Session, lead_id: str) -> list[EnrollmentRow]:
    return leads_enrollments(session, [lead_id]).get(lead_id, [])


def leads_enrollments(session: Session, lead_ids: list[str]) -> dict[str, list[EnrollmentRow]]:
    """Each lead's enrolments, in the order they began (one query per 500 leads)."""
    out: dict[str, list[EnrollmentRow]] = {}
    unique = sorted(set(lead_ids))
    for i in range(0, len(unique), 500):
        for row in session.scalars(select(EnrollmentRow).where(EnrollmentRow.lead_id.in_(unique[i:i + 500]))
                                   .order_by(EnrollmentRow.lead_id, EnrollmentRow.entered_at, EnrollmentRow.ekey)):
            out.setdefault(row.lead_id, []).append(row)
    return out


def members(session: Session, *, journey: str, stage: str, status: str, cursor: str,
            limit: int, step: str = "") -> tuple[list[str], str]:
    q = select(EnrollmentRow.lead_id).where(EnrollmentRow.journey == journey)
    if stage:
        q = q.where(EnrollmentRow.stage == stage)
    if step:
        q = q.where(EnrollmentRow.step == step)
    q = q.where(EnrollmentRow.status == status) if status else q.where(EnrollmentRow.status.in_(LIVE))
    if cursor:
        q = q.where(EnrollmentRow.lead_id > cursor)
    ids = list(dict.fromkeys(session.scalars(q.order_by(EnrollmentRow.lead_id).limit(limit + 1))))
    more = len(ids) > limit
    ids = ids[:limit]
    return ids, (ids[-1] if more and ids else "")


def live_steps(session: Session, journey: str) -> dict[str, int]:
    """Live enrolments per step (active or paused), from the enrolments themselves."""
    rows = session.execute(select(EnrollmentRow.step, func.count()).where(
        EnrollmentRow.journey == journey, EnrollmentRow.status.in_(LIVE)).group_by(EnrollmentRow.step))
    return {str(step): int(n) for step, n in rows if step}


def live_of(session: Session, journey: str) -> list[EnrollmentRow]:
    return list(session.scalars(select(EnrollmentRow).where(EnrollmentRow.journey == journey,
                                                             EnrollmentRow.status.in_(LIVE))))


class ArmedEnrolment(NamedTuple):
    lead_id: str
    ekey: str
    token: int
    due: datetime
    side_pending: int  # queued side steps


class ArmedDate(NamedTuple):
    lead_id: str
    key: str  # "<journey>.<rule>", or a quiet-period clock's key
    token: int
    due: datetime


def armed(session: Session, batch: int = 5000) -> Iterator[ArmedEnrolment]:
    """Every active enrolment's pending timer, for re-arming."""
    last: tuple[str, str] = ("", "")
    while True:
        rows = list(session.execute(
            select(EnrollmentRow.lead_id, EnrollmentRow.ekey, EnrollmentRow.token, EnrollmentRow.due,
                   EnrollmentRow.side_pending)
            .where(EnrollmentRow.status == "active")
            .where((EnrollmentRow.lead_id > last[0]) | ((EnrollmentRow.lead_id == last[0])
                                                        & (EnrollmentRow.ekey > last[1])))
            .order_by(EnrollmentRow.lead_id, EnrollmentRow.ekey).limit(batch)))
        if not rows:
            return
        for lead_id, ekey, token, due, side in rows:
            yield ArmedEnrolment(lead_id, ekey, token, _utc(due) or datetime.min.replace(tzinfo=UTC), side)
        last = (rows[-1][0], rows[-1][1])


def dates_armed(session: Session) -> list[ArmedDate]:
    """Unfired date-relative entry and clock timers."""
    out: list[ArmedDate] = []
    for lead, raw in session.execute(select(LeadRow.lead_id, LeadRow.date_timers).where(LeadRow.date_timers != "{}")):
        for key, entry in json.loads(raw or "{}").items():
            due = times.parse_utc(entry["at"]) or datetime.min.replace(tzinfo=UTC)
            out.append(ArmedDate(lead, key, int(entry["token"]), due))
    return out


def inactivity_armed(session: Session) -> list[tuple[str, int, datetime]]:
    rows = session.execute(select(LeadRow.lead_id, LeadRow.inactive_token, LeadRow.inactive_due)
                           .where(LeadRow.inactive_due.is_not(None)))
    return [(lead, token, _utc(due) or datetime.min.replace(tzinfo=UTC)) for lead, token, due in rows]


def timeline(session: Session, lead_id: str, limit: int) -> list[TransitionRow]:
    return list(session.scalars(select(TransitionRow).where(TransitionRow.lead_id == lead_id)
                                .order_by(TransitionRow.id).limit(limit)))


def _in_window(q: Any, col: Any, *, start: datetime | None, end: datetime | None) -> Any:
    """`q` limited to rows whose `col` is in [start, end); an open end is not limited."""
    if start is not None:
        q = q.where(col >= start)
    if end is not None:
        q = q.where(col < end)
    return q


def history(session: Session, journey: str, start: datetime | None,
            end: datetime | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Step runs, transitions and engagements of one journey in [start, end)."""
    window = functools.partial(_in_window, start=start, end=end)
    runs = [dict(journey=r.journey, step=r.step, status=r.status)
            for r in session.scalars(window(select(StepRunRow).where(StepRunRow.journey == journey), StepRunRow.at))]
    transitions = [dict(journey=t.journey, type=t.type, lead_id=t.lead_id, step_from=t.step_from, stage=t.stage,
                        rule=t.rule, facts=json.loads(t.facts or "{}"))
                   for t in session.scalars(window(select(TransitionRow).where(TransitionRow.journey == journey)
                                                   .order_by(TransitionRow.id), TransitionRow.at))]
    engagements = [dict(journey=g.journey, step=g.step, type=g.type)
                   for g in session.scalars(window(select(EngagementRow).where(EngagementRow.journey == journey),
                                                   EngagementRow.at))]
    return runs, transitions, engagements


# The records behind each step count, in the words of domain.funnel.Funnel (which counts them).
RUN_STATUSES: dict[str, tuple[str, ...] | None] = {
    "entered": None,  # every run but a deferred one
    "sent": ("sent", "scheduled"),
    "suppressed": ("suppressed", "failed"),
}
ENGAGEMENT_TYPES = {"opened": "email_opened", "clicked": "email_clicked"}
COUNTED_MEASURES = (*RUN_STATUSES, *ENGAGEMENT_TYPES, "converted", "exited")


class CountedLeads(NamedTuple):
    """A page of the leads behind one count: (lead id, records of theirs) by lead id, the next page's
    cursor ("" on the last), the count (records over every page) and how many leads over every page."""

    leads: list[tuple[str, int]]
    cursor: str
    total: int
    leads_total: int


def counted_leads(session: Session, *, journey: str, step: str, measure: str, reason: str,
                  start: datetime | None, end: datetime | None, cursor: str,
                  limit: int) -> CountedLeads:
    """The leads behind one count of `history`'s funnel: (lead id, records of theirs) by lead id after
    `cursor`, the next cursor, the count (records over every page) and how many leads over every page.

    Runs and engagements are grouped in SQL (indexed by journey, step, lead); goals and exits are read
    and matched here, as the funnel matches them (their credited step and reason live in the facts)."""
    window = functools.partial(_in_window, start=start, end=end)

    if measure in RUN_STATUSES or measure in ENGAGEMENT_TYPES:
        if measure in RUN_STATUSES:
            statuses = RUN_STATUSES[measure]
            base = window(select(StepRunRow.lead_id.label("lead_id")).where(
                StepRunRow.journey == journey, StepRunRow.step == step,
                StepRunRow.status.in_(statuses) if statuses else StepRunRow.status != "deferred"), StepRunRow.at)
        else:
            base = window(select(EngagementRow.lead_id.label("lead_id")).where(
                EngagementRow.journey == journey, EngagementRow.step == step,
                EngagementRow.type == ENGAGEMENT_TYPES[measure]), EngagementRow.at)
        sub = base.subquery()
        total, leads_total = session.execute(select(func.count(), func.count(func.distinct(sub.c.lead_id)))).one()
        q = select(sub.c.lead_id, func.count()).group_by(sub.c.lead_id)
        if cursor:
            q = q.where(sub.c.lead_id > cursor)
        rows = [(str(lead), int(n)) for lead, n in session.execute(q.order_by(sub.c.lead_id).limit(limit + 1))]
    else:
        kind = "goal" if measure == "converted" else "exited"
        q = window(select(TransitionRow.lead_id, TransitionRow.step_from, TransitionRow.rule, TransitionRow.facts)
                   .where(TransitionRow.journey == journey, TransitionRow.type == kind), TransitionRow.at)
        if kind == "exited" and step:
            q = q.where(TransitionRow.step_from == step)
        tally: dict[str, int] = {}
        for lead, step_from, rule, raw in session.execute(q):
            facts = json.loads(raw or "{}")
            if kind == "goal":
                if str(facts.get("last_sent") or step_from or "") != step:
                    continue
            elif reason and str(rule or facts.get("reason") or "exit") != reason:
                continue
            tally[lead] = tally.get(lead, 0) + 1
        total, leads_total = sum(tally.values()), len(tally)
        rows = sorted((lead, n) for lead, n in tally.items() if lead > cursor)[:limit + 1]
    more = len(rows) > limit
    rows = rows[:limit]
    return CountedLeads(rows, (rows[-1][0] if more and rows else ""), int(total), int(leads_total))


# -- step counters ----------------------------------------------------------------------------------

def add_counts(session: Session, tally: Tally) -> None:
    """Add a tally to the counters (one upsert, in cell order so concurrent writers lock rows alike)."""
    rows = [dict(journey=j, day=d, step=st, measure=m, reason=r, n=n)
            for (j, d, st, m, r), n in tally.nonzero().items()]
    if not rows:
        return
    table = StepCountRow.__table__
    stmt = _insert(session, table)
    session.execute(stmt.on_conflict_do_update(index_elements=["journey", "day", "step", "measure", "reason"],
                                               set_={"n": table.c.n + stmt.excluded.n}), rows)


def _tally_records(session: Session, *, journey: str | None = None, lead_id: str | None = None,
                   start: datetime | None = None, end: datetime | None = None, sign: int = 1) -> Tally:
    """The counters' cells of the records themselves (of a journey, of a lead, in [start, end))."""
    def where(q: Any, table: Any) -> Any:
        if journey is not None:
            q = q.where(table.journey == journey)
        if lead_id is not None:
            q = q.where(table.lead_id == lead_id)
        if start is not None:
            q = q.where(table.at >= start)
        if end is not None:
            q = q.where(table.at < end)
        return q

    tally = Tally()
    r, g, t = StepRunRow, EngagementRow, TransitionRow
    for j, at, step, status in session.execute(where(select(r.journey, r.at, r.step, r.status), r)).yield_per(5000):
        tally.run(j, times.utc(at), step, status, sign)
    for j, at, step, kind in session.execute(where(select(g.journey, g.at, g.step, g.type), g)).yield_per(5000):
        tally.engagement(j, times.utc(at), step, kind, sign)
    for j, at, kind, step_from, rule, facts in session.execute(where(
            select(t.journey, t.at, t.type, t.step_from, t.rule, t.facts).where(t.type.in_(COUNTED_TRANSITIONS)),
            t)).yield_per(5000):
        tally.transition(j, times.utc(at), kind, step_from=step_from, rule=rule, facts=json.loads(facts or "{}"),
                         sign=sign)
    return tally


def rebuild_counters(session: Session) -> int:
    """Derive the step counters again from the record; returns how many cells there are."""
    session.execute(delete(StepCountRow))
    tally = _tally_records(session)
    add_counts(session, tally)
    _upsert(session, MetaRow.__table__, [{"key": "counters_version", "value": COUNTERS_VERSION}], ["key"])
    return len(tally.nonzero())


def ensure_counters(session: Session) -> int | None:
    """Rebuild the counters when another derivation made them (or none: the release that added them);
    returns the cells rebuilt, or None when they were current."""
    if session.scalar(select(MetaRow.value).where(MetaRow.key == "counters_version")) == COUNTERS_VERSION:
        return None
    return rebuild_counters(session)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def step_counts(session: Session, journey: str, start: datetime | None,
                end: datetime | None) -> dict[tuple[str, str, str], int]:
    """The journey's counts by (step, measure, reason) over [start, end): the counters' whole UTC days,
    and the records of the part-days at either end of the range (each at most a day of one journey)."""
    first = None if start is None else (start.date() if start == _midnight(start.date())
                                        else start.date() + timedelta(days=1))
    last = None if end is None else end.date()  # exclusive: [midnight of `last`, end) is read from records
    c = StepCountRow
    out: dict[tuple[str, str, str], int] = {}
    if first is not None and last is not None and first >= last:
        edges = [(start, end)]  # no whole day in the range
    else:
        q = select(c.step, c.measure, c.reason, func.sum(c.n)).where(c.journey == journey)
        if first is not None:
            q = q.where(c.day >= first)
        if last is not None:
            q = q.where(c.day < last)
        for step, measure, reason, n in session.execute(q.group_by(c.step, c.measure, c.reason)):
            out[(str(step), str(measure), str(reason))] = int(n or 0)
        edges = [(lo, hi) for lo, hi in ((start, _midnight(first) if first else None),
                                          (_midnight(last) if last else None, end)) if lo is not None and hi is not None
                 and lo < hi]
    for lo, hi in edges:
        for (_j, _d, step, measure, reason), n in _tally_records(session, journey=journey, start=lo,
                                                                  end=hi).nonzero().items():
            out[(step, measure, reason)] = out.get((step, measure, reason), 0) + n
    return out


def stage_transitions(session: Session, journey: str, start: datetime | None,
                      end: datetime | None) -> list[dict[str, Any]]:
    """The journey's stage transitions in [start, end), in order: their leads and hours make the stage
    table (which counts distinct leads, so it is read from the record, not counted ahead)."""
    t = TransitionRow
    q = select(t.lead_id, t.step_from, t.stage, t.rule, t.facts).where(t.journey == journey, t.type == "stage")
    if start is not None:
        q = q.where(t.at >= start)
    if end is not None:
        q = q.where(t.at < end)
    return [dict(type="stage", lead_id=r.lead_id, step_from=r.step_from, stage=r.stage, rule=r.rule,
                 facts=json.loads(r.facts or "{}")) for r in session.execute(q.order_by(t.id))]


def step_run_keys(session: Session) -> list[tuple[str, str]]:
    """(dedupe_key, status) of every step run: for fault tests and audits."""
    return [(k, s) for k, s in session.execute(select(StepRunRow.dedupe_key, StepRunRow.status))]
