"""SQL storage of the messaging service: blocking functions, run through `Database.run`.

Every function takes the session factory explicitly and does one transaction, so a batch of outcomes
(status changes, timeline lines, events for scoring, suppressions) commits together or not at all.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import RowMapping, Table, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from nurture import times
from nurture.db import insert_new
from nurture.jsontypes import JsonObject
from services.messaging.tables import (
    ad_suppressions,
    ads_outbox,
    audience_members,
    consent_log,
    feedback,
    inbox,
    message_log,
    messages,
    suppressions,
    tracking,
)

SessionFactory = Callable[[], AbstractContextManager[Session]]


naive = times.naive_utc  # the columns hold naive UTC
aware = times.utc_or_none  # (this one relabelled an aware time as UTC instead of converting it)


# How long a replica's claim on a queued message keeps the others off it: far longer than a batch takes
# on the wire, short enough that a dead replica's messages go out the same hour.
CLAIM_LEASE = timedelta(minutes=15)


class Message(NamedTuple):
    """One row of `messaging_messages`, as the worker, the channels and the servicer read it. Times are
    naive UTC, as the columns hold them (`aware` labels them). A NamedTuple: the worker reads rows
    by the batch, and a tuple is built several times faster than a frozen dataclass."""

    id: str
    dedupe_key: str
    lead_id: str
    journey: str
    journey_version: int
    step: str
    channel: str
    template: str
    category: str
    variant: str
    context_json: str
    subject: str
    email_hash: str
    status: str
    reason: str
    attempts: int
    due_at: datetime
    created_at: datetime
    updated_at: datetime
    template_version: int = 0           # 0: not rendered yet
    sent_at: datetime | None = None
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    budget_exempt: bool = False         # the journey step's `budget: exempt`: caps and gap do not hold it

    @property
    def step_stage(self) -> str:
        """The journey stage of the step that sent it: journeys puts it in the send's context (`stage`)."""
        try:
            context = json.loads(self.context_json or "{}")
        except ValueError:
            return ""
        stage = context.get("stage") if isinstance(context, dict) else None
        return stage if isinstance(stage, str) else ""

    @classmethod
    def from_row(cls, row: RowMapping) -> Message:
        """From a SQLAlchemy row mapping (columns a later migration adds are not read here)."""
        return cls._make(_read_columns(row))

    def values(self) -> dict[str, object]:
        """The row to insert."""
        return dict(zip(self._fields, self, strict=True))


_read_columns = operator.itemgetter(*Message._fields)  # every column in one call


@dataclass
class LogLine:
    message_id: str
    lead_id: str
    type: str
    summary: str
    details: JsonObject = field(default_factory=dict)   # stored verbatim as the line's details_json


@dataclass
class Feedback:
    key: str
    lead_id: str
    type: str
    properties: JsonObject   # the event's properties, sent to scoring verbatim
    occurred_at: datetime


class TimelineLine(NamedTuple):
    """A stored line of a lead's message timeline (`messaging_message_log`); times naive UTC."""

    id: int
    message_id: str
    lead_id: str
    at: datetime
    type: str
    summary: str
    details_json: str


class ConsentRecord(NamedTuple):
    """A stored change of a lead's consent on a channel (`messaging_consent_log`); times naive UTC."""

    id: int
    lead_id: str
    channel: str
    granted: bool
    source: str
    at: datetime
    evidence_json: str


class FeedbackRow(NamedTuple):
    """An event recorded for scoring and not yet sent (`messaging_feedback`)."""

    key: str
    lead_id: str
    type: str
    properties_json: str
    occurred_at: datetime


class Suppression(NamedTuple):
    """An address kept from mail: in every scope ("all") or one category, why, and who said so."""

    email_hash: str
    scope: str
    reason: str
    source: str


class ConsentEntry(NamedTuple):
    """A lead's consent on a channel as seen at `at`, with what showed it (stored verbatim)."""

    lead_id: str
    channel: str
    granted: bool
    source: str
    at: datetime
    evidence: JsonObject


class AdsChange(NamedTuple):
    """A membership change queued for the ad platform (`messaging_ads_outbox`)."""

    audience: str
    lead_id: str
    email_hash: str
    op: str          # add | remove


class AdsJob(NamedTuple):
    """A queued change as the ads connector takes it."""

    id: int
    audience: str
    lead_id: str
    email_hash: str
    op: str
    attempts: int


class AdsResult(NamedTuple):
    """What became of a queued change: done, pending (retried at `due_at`) or dead."""

    id: int
    status: str
    attempts: int
    due_at: datetime
    error: str | None


@dataclass(frozen=True)
class AdSuppression:
    """A lead to keep out of every ad audience, why (the rule's name), and, with its email hash,
    its removal from the audiences it is in on the ad platform."""

    lead_id: str
    reason: str
    at: datetime
    email_hash: str = ""


@dataclass
class Outcome:
    """One message's new state after a pass of the worker (fields left None are unchanged)."""

    message_id: str
    status: str
    reason: str = ""
    due_at: datetime | None = None
    attempts: int | None = None
    subject: str | None = None
    variant: str | None = None
    email_hash: str | None = None
    sent_at: datetime | None = None
    template_version: int | None = None
    log: list[LogLine] = field(default_factory=list)
    feedback: list[Feedback] = field(default_factory=list)
    suppress: list[Suppression] = field(default_factory=list)


class Store:
    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    # --- messages ---------------------------------------------------------------------------------
    def insert_message(self, row: Message, log: LogLine) -> tuple[bool, Message]:
        """Insert a requested message; (False, existing row) when its dedupe key is known already."""
        try:
            with self._sessions() as s:
                s.execute(insert(messages).values(**row.values()))
                _log(s, [log], row.created_at)
            return True, row
        except IntegrityError:
            with self._sessions() as s:
                found = s.execute(select(messages).where(messages.c.dedupe_key == row.dedupe_key)).mappings().first()
            if found is None:
                raise
            return False, Message.from_row(found)

    def insert_messages(self, rows: Sequence[tuple[Message, LogLine]]) -> list[tuple[bool, Message]]:
        """Group commit of many inserts: (True, row) for each new dedupe key, (False, stored row) for a key
        already known (in the table or earlier in `rows`). One transaction; falls back to one by one only
        when a concurrent writer inserted one of the keys meanwhile."""
        if not rows:
            return []
        keys = [r.dedupe_key for r, _ in rows]
        try:
            with self._sessions() as s:
                known: dict[str, Message] = {}
                for chunk in range(0, len(keys), 500):
                    for found in s.execute(select(messages).where(
                            messages.c.dedupe_key.in_(keys[chunk:chunk + 500]))).mappings():
                        known[found["dedupe_key"]] = Message.from_row(found)
                out: list[tuple[bool, Message]] = []
                fresh: list[tuple[Message, LogLine]] = []
                for row, line in rows:
                    if row.dedupe_key in known:
                        out.append((False, known[row.dedupe_key]))
                        continue
                    known[row.dedupe_key] = row
                    fresh.append((row, line))
                    out.append((True, row))
                if fresh:
                    s.execute(insert(messages), [r.values() for r, _ in fresh])
                    _log(s, [line for _, line in fresh], fresh[0][0].created_at)
            return out
        except IntegrityError:
            return [self.insert_message(r, line) for r, line in rows]

    def get_messages(self, ids: Iterable[str]) -> dict[str, Message]:
        ids = list(ids)
        with self._sessions() as s:
            rows = s.execute(select(messages).where(messages.c.id.in_(ids))).mappings().all()
        return {r["id"]: Message.from_row(r) for r in rows}

    def due_messages(self, now: datetime, limit: int, replica: str = "0") -> list[Message]:
        """Messages whose time has come (and any left in `sending` by a crash), oldest first, claimed
        for `replica`. Due at one instant, the one queued first goes first, then the lower id: the batch's
        order is the order the caps see (the second of two waits the minimum gap), and by due time alone
        it was each database's scan order (SQLite's and PostgreSQL's differed). Messages carry no priority
        of their own to order by. A message another replica claimed is left to it until the claim is
        older than CLAIM_LEASE (that replica died and did not come back); rows another replica is claiming
        right now are skipped (PostgreSQL's SKIP LOCKED; on SQLite a service is one process, one writer).
        This replica's own claims are its to take again: after a restart, at once."""
        free = or_(messages.c.claimed_by.is_(None), messages.c.claimed_by == replica,
                   messages.c.claimed_at < naive(now - CLAIM_LEASE))
        with self._sessions() as s:
            rows = s.execute(
                select(messages).where(messages.c.status.in_(("scheduled", "sending")),
                                       messages.c.due_at <= naive(now), free)
                .order_by(messages.c.due_at, messages.c.created_at, messages.c.id).limit(limit)
                .with_for_update(skip_locked=True)).mappings().all()
            ids = sorted(r["id"] for r in rows)
            for start in range(0, len(ids), 500):
                s.execute(update(messages).where(messages.c.id.in_(ids[start:start + 500]))
                          .values(claimed_by=replica, claimed_at=naive(now)))
        return [Message.from_row(r) for r in rows]

    def next_due(self) -> datetime | None:
        with self._sessions() as s:
            value = s.execute(select(func.min(messages.c.due_at)).where(
                messages.c.status.in_(("scheduled", "sending")))).scalar()
        return aware(value)

    def scheduled_summary(self, now: datetime) -> tuple[int, int, datetime | None]:
        """Messages waiting for their time (scheduled, or claimed and being sent): how many, how many
        due at `now`, the earliest due time."""
        waiting = messages.c.status.in_(("scheduled", "sending"))
        with self._sessions() as s:
            pending, first = s.execute(select(func.count(), func.min(messages.c.due_at)).where(waiting)).one()
            due = s.execute(select(func.count()).select_from(messages).where(
                waiting, messages.c.due_at <= naive(now))).scalar()
        return int(pending), int(due or 0), aware(first)

    def withdraw(self, lead_id: str, journey: str, version: int, occurrence_prefix: str, reason: str,
                 now: datetime) -> list[str]:
        """Suppress the nurture messages of one enrolment (lead, journey version, and its occurrences'
        prefix: `<entry>.` or `<instance>@<entry>.`) still waiting for a later time; the ids withdrawn. A
        message due by now is left to the worker, which may have claimed it already (a row is claimed
        only once due)."""
        head = f"{lead_id}:{journey}:{version}:"

        def mine(key: str) -> bool:
            # `<head><step>:<occurrence>`: a step id holds no ':'; the occurrence is the prefix and the visit.
            _, _, occurrence = key[len(head):].partition(":")
            rest = occurrence[len(occurrence_prefix):]
            return key.startswith(head) and occurrence.startswith(occurrence_prefix) and rest.isdigit()

        with self._sessions() as s:
            rows = s.execute(select(messages.c.id, messages.c.dedupe_key, messages.c.template).where(
                messages.c.lead_id == lead_id, messages.c.journey == journey,
                messages.c.journey_version == version, messages.c.status == "scheduled",
                messages.c.category == "nurture", messages.c.due_at > naive(now))
                .order_by(messages.c.id).with_for_update()).all()
            found = [r for r in rows if mine(r.dedupe_key)]
            if not found:
                return []
            why = f"withdrawn: the lead left the journey ({reason})"
            ids = [r.id for r in found]
            s.execute(update(messages).where(messages.c.id.in_(ids), messages.c.status == "scheduled")
                      .values(status="suppressed", reason=why, updated_at=naive(now)))
            _log(s, [LogLine(r.id, lead_id, "message_suppressed", f"{r.template} not sent: {why}",
                             {"template": r.template, "reason": why}) for r in found], naive(now))
        return ids

    def apply(self, outcomes: Sequence[Outcome], now: datetime) -> None:
        """Record a batch of outcomes in one transaction."""
        if not outcomes:
            return
        at = naive(now)
        # executemany per shape of change: one statement for hundreds of rows.
        groups: dict[tuple[str, ...], list[dict[str, object]]] = {}
        for o in outcomes:
            values: dict[str, object] = {"status": o.status, "reason": o.reason[:2000], "updated_at": at}
            if o.due_at is not None:
                values["due_at"] = naive(o.due_at)
            if o.attempts is not None:
                values["attempts"] = o.attempts
            if o.subject is not None:
                values["subject"] = o.subject
            if o.variant is not None:
                values["variant"] = o.variant
            if o.email_hash is not None:
                values["email_hash"] = o.email_hash
            if o.template_version is not None:
                values["template_version"] = o.template_version
            if o.sent_at is not None:
                values["sent_at"] = naive(o.sent_at)
            groups.setdefault(tuple(sorted(values)), []).append({"_id": o.message_id, **values})
        with self._sessions() as s:
            for names, rows in groups.items():
                stmt = update(messages).where(messages.c.id == bindparam("_id")).values(
                    {n: bindparam(n) for n in names})
                # Key order, as every path that writes several rows locks them (see nurture.db).
                s.connection().execute(stmt, sorted(rows, key=lambda r: str(r["_id"])))
            # A message erased while its send was in flight (another replica's `erase`, or this one's
            # between the claim and now) leaves no log line or feedback naming its lead: the updates
            # above hold the rows still stored, so an erasure that starts now waits for this commit and
            # removes what it wrote (erase deletes the messages first).
            stored = _stored(s, [o.message_id for o in outcomes])
            kept = [o for o in outcomes if o.message_id in stored]
            _log(s, [line for o in kept for line in o.log], at)
            fb = [f for o in kept for f in o.feedback]
            if fb:
                _insert_ignore(s, feedback, [
                    {"key": f.key, "lead_id": f.lead_id, "type": f.type, "properties_json": json.dumps(f.properties),
                     "occurred_at": naive(f.occurred_at), "sent": False} for f in fb], ["key"])
            sup = [x for o in outcomes for x in o.suppress]
            if sup:
                _insert_ignore(s, suppressions, [
                    {"email_hash": x.email_hash, "scope": x.scope, "reason": x.reason, "source": x.source, "at": at}
                    for x in sup], ["email_hash", "scope"])

    def list_messages(self, lead_id: str, limit: int, ids: Sequence[str] | None = None) -> list[Message]:
        """A lead's messages newest first (what a reader looks for; the limit keeps the latest); with
        `ids`, only those of them (found by primary key: the gateway crediting a posted open reads one row,
        not the lead's whole history)."""
        where = [messages.c.lead_id == lead_id]
        if ids is not None:
            where.append(messages.c.id.in_(sorted(set(ids))))
        with self._sessions() as s:
            rows = s.execute(select(messages).where(*where)
                             .order_by(messages.c.created_at.desc(), messages.c.id.desc())
                             .limit(limit)).mappings().all()
        return [Message.from_row(r) for r in rows]

    def timeline(self, lead_id: str, limit: int) -> list[TimelineLine]:
        c = message_log.c
        with self._sessions() as s:
            rows = s.execute(select(c.id, c.message_id, c.lead_id, c.at, c.type, c.summary, c.details_json)
                             .where(c.lead_id == lead_id).order_by(c.at, c.id).limit(limit)).all()
        return [TimelineLine(*r) for r in rows]

    # --- suppressions and consent ----------------------------------------------------------------
    def suppression_scopes(self, hashes: Iterable[str]) -> dict[str, dict[str, str]]:
        """email hash → {scope: reason} for every suppressed address among `hashes`."""
        hashes = list(set(hashes))
        out: dict[str, dict[str, str]] = {}
        if not hashes:
            return out
        with self._sessions() as s:
            for row in s.execute(select(suppressions).where(suppressions.c.email_hash.in_(hashes))).mappings():
                out.setdefault(row["email_hash"], {})[row["scope"]] = row["reason"]
        return out

    def add_suppression(self, email_hash: str, scope: str, reason: str, source: str, now: datetime) -> bool:
        with self._sessions() as s:
            return _insert_ignore(s, suppressions, [{"email_hash": email_hash, "scope": scope, "reason": reason,
                                                     "source": source, "at": naive(now)}],
                                  ["email_hash", "scope"]) > 0

    def lift_unsubscribes(self, email_hash: str, lead_id: str, bus_id: str, now: datetime,
                          opted_in_at: datetime | None = None) -> list[str]:
        """Subscribing to email again lifts the address's unsubscribes (every scope), never a spam
        report's or a hard bounce's suppression. An erasure's suppression (kept so the erased person is
        not mailed again from a stale import) is lifted only by an explicit opt-in, `opted_in_at`, that
        happened after the erasure: a new legal basis given by the person. When something was lifted, a
        feedback event (`email_resubscribed`, with the scopes) goes to scoring in the same transaction:
        journeys resume what the unsubscribe stopped on that event, so a resumed send can never reach
        messaging before the suppression is gone. Returns the scopes lifted."""
        c = suppressions.c
        liftable = c.reason == "unsubscribed"
        if opted_in_at is not None:
            liftable = or_(liftable, and_(c.reason == "erased", c.at < naive(opted_in_at)))
        with self._sessions() as s:
            scopes = sorted(set(s.scalars(select(c.scope).where(c.email_hash == email_hash, liftable))))
            if not scopes:
                return []
            s.execute(delete(suppressions).where(c.email_hash == email_hash, liftable))
            _insert_ignore(s, feedback, [{"key": f"resub:{bus_id}", "lead_id": lead_id, "type": "email_resubscribed",
                                          "properties_json": json.dumps({"scopes": scopes}),
                                          "occurred_at": naive(now), "sent": False}], ["key"])
            return scopes

    def record_consent(self, entries: Sequence[ConsentEntry]) -> None:
        """Appends to the consent log; skips an entry equal to the last one of its lead and channel.

        The last value of every (lead, channel) concerned is read in one query per 500 leads and the new
        rows go in one executemany: a worker batch costs a few statements, not two per message."""
        if not entries:
            return
        with self._sessions() as s:
            leads = sorted({e.lead_id for e in entries})
            last: dict[tuple[str, str], bool] = {}
            for chunk in range(0, len(leads), 500):
                newest = (select(func.max(consent_log.c.id))
                          .where(consent_log.c.lead_id.in_(leads[chunk:chunk + 500]))
                          .group_by(consent_log.c.lead_id, consent_log.c.channel))
                for lead_id, channel, granted in s.execute(
                        select(consent_log.c.lead_id, consent_log.c.channel, consent_log.c.granted)
                        .where(consent_log.c.id.in_(newest))):
                    last[(lead_id, channel)] = bool(granted)
            rows = []
            for e in entries:
                if last.get((e.lead_id, e.channel)) == e.granted:
                    continue
                last[(e.lead_id, e.channel)] = e.granted
                rows.append({"lead_id": e.lead_id, "channel": e.channel, "granted": e.granted, "source": e.source,
                             "at": naive(e.at), "evidence_json": json.dumps(e.evidence)})
            if rows:
                s.execute(insert(consent_log), rows)

    def consent_history(self, lead_id: str) -> list[ConsentRecord]:
        c = consent_log.c
        with self._sessions() as s:
            return [ConsentRecord(*r) for r in s.execute(
                select(c.id, c.lead_id, c.channel, c.granted, c.source, c.at, c.evidence_json)
                .where(c.lead_id == lead_id).order_by(c.id))]

    # --- tracking and feedback -------------------------------------------------------------------
    def record_tracking(self, *, key: str, message_id: str, lead_id: str, kind: str, url: str, now: datetime,
                        log: LogLine | None, fb: Feedback | None,
                        suppress: Suppression | None = None) -> bool:
        """True for the first hit of `key` (then its log line, feedback and suppression are recorded).
        An open or a click of a message no longer stored (erased since the caller read it) records nothing;
        an unsubscribe is recorded whatever became of its message, as consent wins."""
        at = naive(now)
        with self._sessions() as s:
            if kind != "unsubscribe" and not _stored(s, [message_id], lock=True):
                return False
            new = _insert_ignore(s, tracking, [{"key": key, "message_id": message_id, "lead_id": lead_id,
                                                "kind": kind, "url": url, "at": at, "hits": 1}], ["key"]) > 0
            if not new:
                s.execute(update(tracking).where(tracking.c.key == key).values(hits=tracking.c.hits + 1))
                return False
            if log:
                _log(s, [log], at)
            if fb:
                _insert_ignore(s, feedback, [{"key": fb.key, "lead_id": fb.lead_id, "type": fb.type,
                                              "properties_json": json.dumps(fb.properties),
                                              "occurred_at": naive(fb.occurred_at), "sent": False}], ["key"])
            if suppress:
                _insert_ignore(s, suppressions, [{"email_hash": suppress.email_hash, "scope": suppress.scope,
                                                  "reason": suppress.reason, "source": suppress.source, "at": at}],
                               ["email_hash", "scope"])
        return True

    def pending_feedback(self, limit: int) -> list[FeedbackRow]:
        with self._sessions() as s:
            return [FeedbackRow(r.key, r.lead_id, r.type, r.properties_json, r.occurred_at) for r in s.execute(
                select(feedback.c.key, feedback.c.lead_id, feedback.c.type, feedback.c.properties_json,
                       feedback.c.occurred_at).where(feedback.c.sent.is_(False))
                .order_by(feedback.c.occurred_at).limit(limit))]

    def mark_feedback_sent(self, keys: Sequence[str]) -> None:
        if keys:
            with self._sessions() as s:
                s.execute(update(feedback).where(feedback.c.key.in_(list(keys))).values(sent=True))

    def ab_counts(self, template: str) -> dict[str, dict[str, int]]:
        """variant → {sent, opened, clicked} (unique messages) for one template."""
        out: dict[str, dict[str, int]] = {}
        with self._sessions() as s:
            for variant, n in s.execute(select(messages.c.variant, func.count()).where(
                    messages.c.template == template, messages.c.status == "sent").group_by(messages.c.variant)):
                out.setdefault(variant, {"sent": 0, "opened": 0, "clicked": 0})["sent"] = int(n)
            q = (select(messages.c.variant, tracking.c.kind, func.count(func.distinct(tracking.c.message_id)))
                 .join(tracking, tracking.c.message_id == messages.c.id)
                 .where(messages.c.template == template, messages.c.status == "sent")
                 .group_by(messages.c.variant, tracking.c.kind))
            for variant, kind, n in s.execute(q):
                bucket = out.setdefault(variant, {"sent": 0, "opened": 0, "clicked": 0})
                if kind == "open":
                    bucket["opened"] = int(n)
                elif kind == "click":
                    bucket["clicked"] = int(n)
        return out

    # --- audiences ----------------------------------------------------------------------------------
    def audience_change(self, audience: str, lead_id: str, add: bool, now: datetime, email_hash: str = "") -> None:
        """A lead joins or leaves an audience; with its email hash, the change is queued for the ad
        platform in the same transaction (the ads connector's outbound queue), unless the lead is
        suppressed from ads (then it is recorded here and never sent)."""
        with self._sessions() as s:
            if add and email_hash and s.execute(select(ad_suppressions.c.lead_id).where(
                    ad_suppressions.c.lead_id == lead_id)).first() is not None:
                email_hash = ""
            if add:
                _insert_ignore(s, audience_members, [{"audience": audience, "lead_id": lead_id,
                                                      "added_at": naive(now)}], ["audience", "lead_id"])
            else:
                s.execute(delete(audience_members).where(audience_members.c.audience == audience,
                                                         audience_members.c.lead_id == lead_id))
            if email_hash:
                _queue_ads(s, [AdsChange(audience, lead_id, email_hash, "add" if add else "remove")], now)

    def ads_due(self, now: datetime, limit: int) -> list[AdsJob]:
        """Pending changes in id order up to the first not yet due (one waiting for a retry holds the
        ones behind it: an add and a remove of one lead must reach the platform in order)."""
        with self._sessions() as s:
            rows = s.execute(select(ads_outbox).where(ads_outbox.c.status == "pending")
                             .order_by(ads_outbox.c.id).limit(limit)).all()
        due: list[AdsJob] = []
        for r in rows:
            if r.due_at > naive(now):
                break
            due.append(AdsJob(r.id, r.audience, r.lead_id, r.email_hash, r.op, r.attempts))
        return due

    def ads_next_due(self) -> datetime | None:
        with self._sessions() as s:
            value = s.execute(select(func.min(ads_outbox.c.due_at)).where(ads_outbox.c.status == "pending")).scalar()
        return aware(value)

    def ads_finish(self, outcomes: Sequence[AdsResult]) -> None:
        """What became of each job, one executemany in id order."""
        if not outcomes:
            return
        with self._sessions() as s:
            s.execute(update(ads_outbox).where(ads_outbox.c.id == bindparam("b_id")).values(
                status=bindparam("b_status"), attempts=bindparam("b_attempts"), due_at=bindparam("b_due"),
                last_error=bindparam("b_error")),
                [{"b_id": o.id, "b_status": o.status, "b_attempts": o.attempts, "b_due": naive(o.due_at),
                  "b_error": o.error} for o in sorted(outcomes, key=lambda o: o.id)])

    def audience(self, audience: str) -> list[str]:
        with self._sessions() as s:
            return list(s.execute(select(audience_members.c.lead_id).where(audience_members.c.audience == audience)
                                  .order_by(audience_members.c.lead_id)).scalars())

    def ad_suppress(self, lead_id: str, reason: str, now: datetime, on: bool = True, email_hash: str = "") -> bool:
        """Keep the lead out of every ad audience; True when it was not already. With its email hash, a
        new suppression also queues its removal from every audience it is in on the ad platform."""
        if not on:
            with self._sessions() as s:
                s.execute(delete(ad_suppressions).where(ad_suppressions.c.lead_id == lead_id))
            return False
        return bool(self.ad_suppress_many([AdSuppression(lead_id, reason, now, email_hash)]))

    def ad_suppress_many(self, items: Sequence[AdSuppression]) -> set[str]:
        """`ad_suppress` for many leads in one transaction (the bus handler's batch: a transaction per
        message was most of messaging's database work). A lead named twice keeps its first reason.
        Returns the leads that were not suppressed before; only their audiences are queued for
        removal, once, even when another transaction suppresses the same lead at the same time."""
        first: dict[str, AdSuppression] = {}
        for item in items:
            first.setdefault(item.lead_id, item)
        if not first:
            return set()
        new: set[str] = set()
        with self._sessions() as s:
            known = set(s.execute(select(ad_suppressions.c.lead_id).where(
                ad_suppressions.c.lead_id.in_(sorted(first)))).scalars())
            rows = [{"lead_id": i.lead_id, "reason": i.reason, "at": naive(i.at)}
                    for _, i in sorted(first.items()) if i.lead_id not in known]  # key order, as locks go
            if rows:
                new = set(s.execute(insert_new(s, ad_suppressions, ["lead_id"]).returning(ad_suppressions.c.lead_id),
                                    rows).scalars())
            hashed = sorted(lead for lead in new if first[lead].email_hash)
            if hashed:
                members = s.execute(select(audience_members.c.audience, audience_members.c.lead_id)
                                    .where(audience_members.c.lead_id.in_(hashed))
                                    .order_by(audience_members.c.lead_id, audience_members.c.audience)).all()
                for lead in hashed:  # a lead is newly suppressed once: these are rare
                    item = first[lead]
                    _queue_ads(s, [AdsChange(a, lead, item.email_hash, "remove") for a, who in members if who == lead],
                               item.at)
        return new

    def ad_suppressed(self, lead_ids: Iterable[str]) -> dict[str, str]:
        ids = list(lead_ids)
        if not ids:
            return {}
        with self._sessions() as s:
            return {r.lead_id: r.reason for r in s.execute(select(ad_suppressions).where(
                ad_suppressions.c.lead_id.in_(ids)))}

    # --- bus inbox and erasure --------------------------------------------------------------------
    def unseen(self, ids: Sequence[str]) -> set[str]:
        with self._sessions() as s:
            seen = set(s.execute(select(inbox.c.id).where(inbox.c.id.in_(list(ids)))).scalars())
        return set(ids) - seen

    def mark_seen(self, ids: Sequence[str], now: datetime) -> None:
        if not ids:
            return
        with self._sessions() as s:
            s.execute(insert_new(s, inbox, ["id"]), [{"id": i, "at": naive(now)} for i in sorted(set(ids))])

    def erase(self, lead_id: str, email_hash: str, now: datetime) -> int:
        """Forget the lead; keep only a suppression entry of the hashed address."""
        removed = 0
        with self._sessions() as s:
            # The messages first, locked in key order as `apply` locks them: a send or a tracking hit in
            # flight on another replica holds its message's row until it commits, so this waits for it and
            # the deletes below see what it wrote (the other way round, its log lines and feedback would
            # land after them and outlive the erasure).
            s.execute(select(messages.c.id).where(messages.c.lead_id == lead_id)
                      .order_by(messages.c.id).with_for_update()).all()
            removed += getattr(s.execute(delete(messages).where(messages.c.lead_id == lead_id)), "rowcount", 0) or 0
            for table in (message_log, tracking, consent_log, feedback, audience_members):
                removed += getattr(s.execute(delete(table).where(table.c.lead_id == lead_id)), "rowcount", 0) or 0
            s.execute(delete(ad_suppressions).where(ad_suppressions.c.lead_id == lead_id))
            if email_hash:
                # The erasure's suppression replaces the address's unsubscribes: what consent given again
                # would lift, only a new explicit opt-in lifts now (lift_unsubscribes). A spam report's or
                # a hard bounce's stays as it is.
                s.execute(delete(suppressions).where(suppressions.c.email_hash == email_hash,
                                                     suppressions.c.reason == "unsubscribed"))
                _insert_ignore(s, suppressions, [{"email_hash": email_hash, "scope": "all", "reason": "erased",
                                                  "source": "erasure", "at": naive(now)}], ["email_hash", "scope"])
        return removed


def _stored(s: Session, ids: Sequence[str], *, lock: bool = False) -> set[str]:
    """Which of these messages are still stored; `lock` holds them (FOR SHARE on PostgreSQL) until the
    transaction ends, so an erasure waits for it."""
    found: set[str] = set()
    unique = sorted(set(ids))
    for chunk in range(0, len(unique), 500):
        query = select(messages.c.id).where(messages.c.id.in_(unique[chunk:chunk + 500]))
        found.update(s.execute(query.with_for_update(read=True) if lock else query).scalars())
    return found


def _log(s: Session, lines: Sequence[LogLine], at: datetime) -> None:
    if lines:
        s.execute(insert(message_log), [
            {"message_id": line.message_id, "lead_id": line.lead_id, "at": at, "type": line.type,
             "summary": line.summary, "details_json": json.dumps(line.details, default=str)} for line in lines])


def _insert_ignore(s: Session, table: Table, rows: list[dict[str, object]], keys: list[str]) -> int:
    """Insert rows whose key is not present yet; returns how many were new (portable: SQLite and PG)."""
    if not rows:
        return 0
    existing: set[tuple[object, ...]] = set()
    if len(keys) == 1:
        values = [r[keys[0]] for r in rows]
        for chunk in range(0, len(values), 500):
            existing.update((v,) for v in s.execute(select(table.c[keys[0]]).where(
                table.c[keys[0]].in_(values[chunk:chunk + 500]))).scalars())
    else:
        conds = [and_(*[table.c[k] == r[k] for k in keys]) for r in rows]
        for chunk in range(0, len(conds), 400):
            for found in s.execute(select(*[table.c[k] for k in keys]).where(or_(*conds[chunk:chunk + 400]))):
                existing.add(tuple(found))
    fresh, seen = [], set()
    for r in rows:
        ident = tuple(r[k] for k in keys)
        if ident in existing or ident in seen:
            continue
        seen.add(ident)
        fresh.append(r)
    if fresh:
        s.execute(insert(table), fresh)
    return len(fresh)


def _queue_ads(s: Session, items: Sequence[AdsChange], now: datetime) -> None:
    if items:
        s.execute(insert(ads_outbox), [{"audience": c.audience, "lead_id": c.lead_id, "email_hash": c.email_hash,
                                        "op": c.op, "status": "pending", "attempts": 0, "due_at": naive(now)}
                                       for c in items])
