"""The scoring service's record: leads, events, score changes, audit and the outbox, in SQL.

Every write is one transaction that also inserts the bus messages it causes into the outbox, so an
accepted event is stored, scored and announced exactly once even if the process dies at any point
(the outbox is re-published after a crash; consumers drop repeats by message id).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from opentelemetry.propagate import inject
from sqlalchemy import Connection, Row, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from nurture import jsoncodec, limits, times
from nurture.bus import encode
from nurture.db import DriverWrites
from services.scoring.model import Outcome, ScoringModel, derive_counters
from services.scoring.tables import audit, events, leads, outbox, score_changes

SEGMENTS = ("skilled_professional", "family", "entrepreneur")
EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
LEAD_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
PROFILE_FIELDS = ("email", "first_name", "last_name", "segment", "timezone", "locale", "crm_id")
# Sizes a person's record can sensibly have. Names go into mail headers (SMTP lines stop at 998
# octets: a 50k-character first name made every email fail) and every lead snapshot rides on each
# bus message, so one oversized attribute slows every service; HubSpot caps a property at 65,536.
MAX_LENGTHS = {"email": 254, "first_name": 200, "last_name": 200, "locale": 35, "crm_id": 128, "timezone": 64}
MAX_ATTRIBUTE_CHARS = 65_536
MAX_ATTRIBUTES_BYTES = 262_144


# The ingest path's reads, built once (building and cache-keying one costs more than running it);
# its writes go on the driver's cursor (DriverWrites).
_EVENTS_BY_KEY = select(events.c.idempotency_key, events.c.id, events.c.lead_id, events.c.type).where(
    events.c.idempotency_key.in_(bindparam("keys", expanding=True)))
# Rows are locked in primary-key order on every path that locks more than one lead: two transactions
# locking overlapping sets in different orders deadlock on PostgreSQL (the order of an IN list is not
# the order rows are locked in; ORDER BY is, as LockRows sits above the sort).
_LEADS_FOR_UPDATE = (select(leads).where(leads.c.id.in_(bindparam("ids", expanding=True))).order_by(leads.c.id)
                     .with_for_update())
_LOCK_LEADS = (select(leads.c.id).where(leads.c.id.in_(bindparam("ids", expanding=True))).order_by(leads.c.id)
               .with_for_update())
_EVENT_COLUMNS = ("id", "lead_id", "type", "properties", "occurred_at", "received_at", "idempotency_key", "source",
                  "score_delta", "signals")
_CHANGE_COLUMNS = ("lead_id", "at", "delta", "score_after", "rule", "reason", "event_id", "model_version")
_SAVED_LEAD_COLUMNS = ("score", "counters", "recent", "interests", "segment", "lifecycle_stage", "last_engaged_at",
                       "lapse_due_at", "consent", "version", "updated_at")


class InvalidInput(ValueError):
    """Input that is well-formed but wrong; `problems` maps a field to what is wrong with it."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.problems = problems


class NotFound(LookupError):
    pass


class EmailTaken(ValueError):
    """The email belongs to another lead: one person is one lead (HubSpot refuses such a contact the
    same way), or every journey would write to them twice."""

    def __init__(self, email: str, lead_id: str) -> None:
        # The message names neither lead: it reaches API callers (a 409), the other id stays internal.
        super().__init__("this email belongs to another lead")
        self.lead_id = lead_id


@dataclass(frozen=True)
class EventIn:
    lead_id: str
    type: str
    properties: dict[str, Any]
    occurred_at: datetime | None
    idempotency_key: str | None
    source: str
    trace: str | None = None  # the W3C traceparent of the request that sent this event


# An outbox row as published: (seq, lead_id, message JSON, trace carrier JSON or None).
OutboxRow = tuple[int, str, str, str | None]


@dataclass(frozen=True)
class EventResult:
    event_id: str = ""
    duplicate: bool = False
    error_code: str = ""
    error_message: str = ""


def email_hash(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def _loads(text: str | None, what: str = "value") -> Any:
    # Strict: a stored text that is not I-JSON (a lone surrogate, NaN) reads as a marked placeholder.
    return limits.read_json(text, what=what)


_aware = times.utc_or_none  # SQLite hands back naive datetimes; every stored time is UTC


def lead_dict(row: Row[Any] | Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """A lead as every consumer sees it (the bus snapshot and the API body)."""
    m = row._mapping if isinstance(row, Row) else row
    counters = _loads(m["counters"])
    last = _aware(m["last_engaged_at"])
    if now is not None:
        counters.update(derive_counters(_loads(m["recent"]), counters.get("totals", {}), last, now))
    public_counters = {k: v for k, v in counters.items() if k not in ("totals", "fired_today")}
    return {
        "id": m["id"],
        "email": m["email"],
        "first_name": m["first_name"],
        "last_name": m["last_name"],
        "segment": m["segment"],
        "timezone": m["timezone"],
        "locale": m["locale"],
        # What readers are shown must serialise again: a stored value past the limits degrades.
        "attributes": limits.readable(_loads(m["attributes"], "attributes"), what="attributes"),
        "consent": limits.readable(_loads(m["consent"], "consent"), what="consent"),
        "score": m["score"],
        "grade": m["grade"],
        "lifecycle_stage": m["lifecycle_stage"],
        "counters": public_counters,
        "interests": _loads(m["interests"]),
        "crm_id": m["crm_id"],
        "version": m["version"],
        "created_at": _iso(m["created_at"]),
        "updated_at": _iso(m["updated_at"]),
        "last_engaged_at": _iso(last),
    }


_iso = times.rfc3339_or_none


def _internal(row: Row[Any]) -> dict[str, Any]:
    """A lead row with its JSON decoded, for the model."""
    m = row._mapping
    return {
        **{k: m[k] for k in ("id", "email", "first_name", "last_name", "segment", "score", "grade",
                             "lifecycle_stage", "timezone", "locale", "crm_id", "version")},
        "attributes": _loads(m["attributes"]),
        "consent": _loads(m["consent"]),
        "counters": _loads(m["counters"]),
        "recent": _loads(m["recent"]),
        "interests": _loads(m["interests"]),
        "last_engaged_at": _aware(m["last_engaged_at"]),
        "lapse_due_at": _aware(m["lapse_due_at"]),
    }


def validate_profile(fields: Mapping[str, Any], *, partial: bool) -> dict[str, str]:
    problems: dict[str, str] = {}
    for name in PROFILE_FIELDS:
        value = fields.get(name)
        if value is not None and not isinstance(value, str):
            problems[name] = "must be a string or null"
        elif isinstance(value, str) and len(value) > MAX_LENGTHS.get(name, 200):
            problems[name] = f"must be at most {MAX_LENGTHS.get(name, 200)} characters"
    email = fields.get("email")
    if isinstance(email, str) and not EMAIL.fullmatch(email):
        problems["email"] = "is not an email address"
    segment = fields.get("segment")
    if isinstance(segment, str) and segment not in SEGMENTS:
        problems["segment"] = f"must be one of {', '.join(SEGMENTS)} or null"
    tz = fields.get("timezone")
    if isinstance(tz, str):
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            problems["timezone"] = "is not an IANA time zone"
    if "attributes" in fields and not isinstance(fields["attributes"], dict):
        problems["attributes"] = "must be an object"
    elif isinstance(fields.get("attributes"), dict):
        attrs = fields["attributes"]
        for name, value in attrs.items():
            if len(str(name)) > 200:
                problems[f"attributes.{str(name)[:40]}..."] = "attribute names are at most 200 characters"
            elif isinstance(value, str) and len(value) > MAX_ATTRIBUTE_CHARS:
                problems[f"attributes.{name}"] = f"must be at most {MAX_ATTRIBUTE_CHARS} characters"
        if len(jsoncodec.dumps(attrs, default=str)) > MAX_ATTRIBUTES_BYTES:
            problems.setdefault("attributes", f"must be at most {MAX_ATTRIBUTES_BYTES} bytes as JSON")
    consent = fields.get("consent")
    if consent is not None and (
        not isinstance(consent, dict) or not all(isinstance(v, bool) for v in consent.values())
    ):
        problems["consent"] = "must be an object of channel: true|false"
    unknown = set(fields) - {*PROFILE_FIELDS, "id", "attributes", "consent"}
    for name in sorted(unknown):
        problems[name] = "is not a lead field (custom fields go in attributes)"
    return problems


class Store:
    """Blocking storage operations; the server runs them in the database executor."""

    def __init__(self, db_sessions: Any, model: ScoringModel, writes: DriverWrites) -> None:
        self._sessions = db_sessions
        self.model = model
        self._writes = writes

    # -- leads -------------------------------------------------------------------------------------

    def upsert_lead(
        self, lead_id: str, fields: Mapping[str, Any], *, merge: bool, source: str, must_exist: bool, now: datetime
    ) -> tuple[dict[str, Any], bool]:
        problems = validate_profile(fields, partial=merge)
        if lead_id and not LEAD_ID.fullmatch(lead_id):
            problems["id"] = "must be 1-128 letters, digits or _.:@-"
        if problems:
            raise InvalidInput(problems)
        with self._sessions() as s:
            row = None
            if lead_id:
                row = s.execute(select(leads).where(leads.c.id == lead_id).with_for_update()).first()
            elif fields.get("email") and not must_exist:
                # Match by email before creating a duplicate person (CRM imports, forms); addresses
                # differ only in case are one mailbox.
                row = s.execute(select(leads).where(func.lower(leads.c.email) == str(fields["email"]).lower())
                                .limit(1)).first()
            if row is None and must_exist:
                raise NotFound(lead_id)
            created = row is None
            current: dict[str, Any] = dict(row._mapping) if row else {
                "id": lead_id or uuid.uuid4().hex, "attributes": "{}", "consent": "{}", "counters": "{}",
                "recent": "{}", "interests": "{}", "score": 0, "grade": "D", "version": 0,
                "lifecycle_stage": self.model.stage_order[0], "created_at": now, "last_engaged_at": None,
                "lapse_due_at": None, **{f: None for f in PROFILE_FIELDS},
            }
            email = fields.get("email")
            if email and str(email).lower() != str(current["email"] or "").lower():
                other = s.execute(select(leads.c.id).where(func.lower(leads.c.email) == str(email).lower(),
                                                           leads.c.id != current["id"]).limit(1)).scalar()
                if other is not None:
                    raise EmailTaken(str(email), str(other))
            changes: dict[str, Any] = {}
            for name in PROFILE_FIELDS:
                if name in fields and fields[name] != current[name]:
                    changes[name] = fields[name]
            attributes = _loads(current["attributes"])
            if "attributes" in fields:
                new_attrs = {**attributes, **fields["attributes"]} if merge else dict(fields["attributes"])
                new_attrs = {k: v for k, v in new_attrs.items() if v is not None}
                if new_attrs != attributes:
                    changes["attributes"] = jsoncodec.dumps(new_attrs)
                    attributes = new_attrs
            consent = _loads(current["consent"])
            if "consent" in fields and fields["consent"] is not None:
                new_consent = {**consent, **fields["consent"]}
                if new_consent != consent:
                    changes["consent"] = jsoncodec.dumps(new_consent)
                    for channel, given in fields["consent"].items():
                        if consent.get(channel) != given:
                            s.execute(insert(audit).values(
                                lead_id=current["id"], at=now, action="consent_given" if given else "consent_withdrawn",
                                source=source, details=jsoncodec.dumps({"channel": channel, "value": given}),
                                erased=False))
            profile = {**current, **changes, "attributes": attributes}
            _, grade, _ = self.model.fit({"attributes": attributes, "email": profile["email"]})
            if grade != current["grade"]:
                changes["grade"] = grade
            if not profile.get("segment"):
                segment = self.model.classify({"attributes": attributes})
                if segment:
                    changes["segment"] = segment
            if not created and not changes:
                return lead_dict(current, now), False
            changes["updated_at"] = now
            changes["version"] = int(current["version"]) + 1
            if created:
                s.execute(insert(leads).values({**current, **changes}))
            else:
                s.execute(update(leads).where(leads.c.id == current["id"]).values(changes))
            after = s.execute(select(leads).where(leads.c.id == current["id"])).one()
            snapshot = lead_dict(after, now)
            kind = "lead_created" if created else "lead_updated"
            changed = sorted(k for k in changes if k not in ("updated_at", "version"))
            self._outbox(s, {
                "id": f"{kind}:{current['id']}:{changes['version']}", "lead_id": current["id"], "type": kind,
                "properties": {"changed": changed, "source": source}, "occurred_at": _iso(now), "lead": snapshot,
                "score_delta": 0, "rules": [], "signals": [],
            })
            return snapshot, created

    def upsert_leads(
        self, items: Sequence[tuple[str, Mapping[str, Any], bool, str, bool]], now: datetime
    ) -> list[tuple[dict[str, Any], bool] | InvalidInput | NotFound | EmailTaken]:
        """Many upserts (id, fields, merge, source, must_exist) in one transaction: one commit for a
        whole batch. Input problems are found before anything is written, so a bad lead fails alone."""
        with self._sessions() as s:
            ids = sorted({lead_id for lead_id, *_ in items if lead_id})
            if ids:  # every lead of the batch locked up front, in key order (see _LEADS_FOR_UPDATE)
                s.execute(_LOCK_LEADS, {"ids": ids}).all()
            # The same code as a single upsert, on this transaction's session.
            shared = Store(lambda: contextlib.nullcontext(s), self.model, self._writes)
            out: list[tuple[dict[str, Any], bool] | InvalidInput | NotFound | EmailTaken] = []
            for lead_id, fields, merge, source, must_exist in items:
                try:
                    out.append(shared.upsert_lead(lead_id, fields, merge=merge, source=source,
                                                  must_exist=must_exist, now=now))
                except (InvalidInput, NotFound, EmailTaken) as exc:
                    out.append(exc)
            return out

    def get_leads(self, ids: Sequence[str], now: datetime) -> list[dict[str, Any]]:
        with self._sessions() as s:
            rows = s.execute(select(leads).where(leads.c.id.in_(list(ids)))).all()
        by_id = {r.id: lead_dict(r, now) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def list_leads(
        self, *, segment: str, min_score: int | None, stage: str, email: str, cursor: str, limit: int, now: datetime
    ) -> tuple[list[dict[str, Any]], str]:
        query = select(leads).order_by(leads.c.id).limit(limit + 1)
        if segment:
            query = query.where(leads.c.segment == segment)
        if min_score is not None:
            query = query.where(leads.c.score >= min_score)
        if stage:
            query = query.where(leads.c.lifecycle_stage == stage)
        if email:
            query = query.where(leads.c.email == email)
        if cursor:
            query = query.where(leads.c.id > cursor)
        with self._sessions() as s:
            rows = s.execute(query).all()
        page = [lead_dict(r, now) for r in rows[:limit]]
        return page, (page[-1]["id"] if len(rows) > limit else "")

    def erase_lead(self, lead_id: str, now: datetime) -> tuple[bool, str]:
        with self._sessions() as s:
            row = s.execute(select(leads).where(leads.c.id == lead_id).with_for_update()).first()
            if row is None:
                return False, ""
            hashed = email_hash(row.email) if row.email else ""
            s.execute(delete(events).where(events.c.lead_id == lead_id))
            s.execute(delete(score_changes).where(score_changes.c.lead_id == lead_id))
            s.execute(update(audit).where(audit.c.lead_id == lead_id).values(details="{}", erased=True))
            s.execute(insert(audit).values(lead_id=lead_id, at=now, action="erased", source="api",
                                           details=jsoncodec.dumps({"email_hash": hashed}), erased=True))
            s.execute(delete(leads).where(leads.c.id == lead_id))
            self._outbox(s, {
                "id": f"lead_erased:{lead_id}:{int(now.timestamp() * 1e6)}", "lead_id": lead_id,
                "type": "lead_erased", "properties": {"email_hash": hashed}, "occurred_at": _iso(now),
                "lead": {"id": lead_id}, "score_delta": 0, "rules": [], "signals": [],
            })
            return True, hashed

    # -- events ------------------------------------------------------------------------------------

    def ingest(
        self, batch: Sequence[EventIn], now: datetime, published: Sequence[int] = ()
    ) -> tuple[list[EventResult], list[OutboxRow]]:
        """Store and score a batch in one transaction. Bad events are rejected one by one; the good
        ones are all committed together. Returns the results and the outbox rows written, which the
        caller publishes from memory; `published` are outbox rows published since, deleted here so
        that the hot path costs one transaction (a crash before that delete republishes them, and
        consumers drop repeats by message id)."""
        results: list[EventResult | None] = [None] * len(batch)
        for i, ev in enumerate(batch):
            problem = _event_problem(ev)
            if problem:
                results[i] = EventResult(error_code="invalid", error_message=problem)
        # The hot path: a Core transaction (an ORM session's own cost was a tenth of a small one),
        # prebuilt reads and writes on the driver's cursor (SQLAlchemy's execution of each statement
        # cost more than SQLite's work here).
        with self._writes.begin() as s:
            if published:
                self._writes.delete(s, outbox, "seq", published)
            keys = [ev.idempotency_key for i, ev in enumerate(batch) if ev.idempotency_key and results[i] is None]
            seen: dict[str, tuple[str, str, str]] = {}  # key → (event id, lead, type)
            if keys:
                for row in s.execute(_EVENTS_BY_KEY, {"keys": keys}):
                    seen[row.idempotency_key] = (row.id, row.lead_id, row.type)
            lead_ids = sorted({ev.lead_id for i, ev in enumerate(batch) if results[i] is None})
            rows = {r.id: _internal(r) for r in s.execute(_LEADS_FOR_UPDATE, {"ids": lead_ids})} if lead_ids else {}
            touched: set[str] = set()
            event_rows: list[tuple[Any, ...]] = []
            change_rows: list[tuple[Any, ...]] = []
            messages: list[dict[str, Any]] = []
            for i, ev in enumerate(batch):
                if results[i] is not None:
                    continue
                if ev.idempotency_key and ev.idempotency_key in seen:
                    first_id, first_lead, first_type = seen[ev.idempotency_key]
                    if (first_lead, first_type) == (ev.lead_id, ev.type):
                        results[i] = EventResult(event_id=first_id, duplicate=True)
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
                    seen[ev.idempotency_key] = (event_id, ev.lead_id, ev.type)
                occurred = ev.occurred_at or now
                outcome = self.model.score_event(lead, {"type": ev.type, "properties": ev.properties,
                                                        "occurred_at": occurred}, now)
                old_score, old_stage, old_segment = lead["score"], lead["lifecycle_stage"], lead["segment"]
                self._apply(lead, outcome, now)
                touched.add(ev.lead_id)
                event_rows.append((event_id, ev.lead_id, ev.type, jsoncodec.dumps(ev.properties), occurred, now,
                                   ev.idempotency_key, ev.source or "api", outcome.delta,
                                   jsoncodec.dumps(outcome.signals)))
                running = old_score
                for p in outcome.points:
                    running = max(0, running + p.points)
                    change_rows.append((ev.lead_id, occurred, p.points, running, p.rule, p.why, event_id,
                                        self.model.version))
                caused = self._event_messages(lead, ev, event_id, occurred, outcome, old_score, old_stage,
                                              old_segment, now)
                if ev.trace:
                    for message in caused:
                        message["_trace"] = ev.trace
                messages.extend(caused)
                results[i] = EventResult(event_id=event_id)
            if event_rows:
                self._writes.insert(s, events, _EVENT_COLUMNS, event_rows)
            if change_rows:
                self._writes.insert(s, score_changes, _CHANGE_COLUMNS, change_rows)
            self._save_all(s, [rows[lead_id] for lead_id in sorted(touched)], now)
            written = self._outbox_many(s, messages)
        return [r or EventResult(error_code="internal", error_message="not processed") for r in results], written

    def _apply(self, lead: dict[str, Any], outcome: Outcome, now: datetime) -> None:
        # One version per applied event: consumers drop a replayed snapshot older than what they hold.
        lead["version"] = int(lead["version"]) + 1
        lead["score"] = max(0, int(lead["score"]) + outcome.delta)
        lead["counters"] = outcome.counters
        lead["recent"] = outcome.recent
        lead["interests"] = outcome.interests
        if outcome.segment:
            lead["segment"] = outcome.segment
        if outcome.stage:
            lead["lifecycle_stage"] = outcome.stage
        if outcome.consent_email is not None and lead["consent"].get("email") != outcome.consent_email:
            lead["consent"] = {**lead["consent"], "email": outcome.consent_email}
            lead.setdefault("_consent_changes", []).append(outcome.consent_email)
        if outcome.engaged:
            last = outcome.counters.get("last_engagement_at")
            lead["last_engaged_at"] = times.parse_utc(last) or lead["last_engaged_at"]

    def _save_all(self, s: Session | Connection, touched: list[dict[str, Any]], now: datetime) -> None:
        """One executemany UPDATE for every lead the batch touched (the batch's hot spot otherwise)."""
        rows = []
        inactive = timedelta(days=int(self.model.decay["inactive_days"]))
        for lead in touched:
            last = lead["last_engaged_at"]
            lapse = last + inactive if last is not None else None
            if lapse is not None and lead.get("lapse_due_at") is not None:
                # Decay already moved the next lapse past last+inactive; an event that is not
                # engagement (a send, a CRM push) must not set it back, or the same quiet period
                # decays again at every such event.
                lapse = max(lapse, lead["lapse_due_at"])
            rows.append((lead["score"], jsoncodec.dumps(lead["counters"]), jsoncodec.dumps(lead["recent"]),
                         jsoncodec.dumps(lead["interests"]), lead["segment"], lead["lifecycle_stage"], last, lapse,
                         jsoncodec.dumps(lead["consent"]), lead["version"], now, lead["id"]))
            for given in lead.pop("_consent_changes", []):
                s.execute(insert(audit).values(
                    lead_id=lead["id"], at=now, action="consent_given" if given else "consent_withdrawn",
                    source="event", details=jsoncodec.dumps({"channel": "email", "value": given}), erased=False))
        if not rows:
            return
        self._writes.update(s.connection() if isinstance(s, Session) else s, leads, _SAVED_LEAD_COLUMNS, "id", rows)

    def _event_messages(
        self, lead: dict[str, Any], ev: EventIn, event_id: str, occurred: datetime, outcome: Outcome,
        old_score: int, old_stage: str, old_segment: str | None, now: datetime,
    ) -> list[dict[str, Any]]:
        snapshot = self._snapshot(lead, now)
        base = {"lead_id": ev.lead_id, "occurred_at": _iso(occurred), "lead": snapshot}
        rules = [{"rule": p.rule, "points": p.points, "why": p.why} for p in outcome.points]
        out = [{**base, "id": event_id, "type": ev.type, "properties": ev.properties, "score_delta": outcome.delta,
                "rules": rules, "signals": outcome.signals, "source": ev.source}]
        if lead["score"] != old_score:
            out.append({**base, "id": f"{event_id}:score", "type": "score_changed",
                        "properties": {"old": old_score, "new": lead["score"], "event_id": event_id},
                        "score_delta": lead["score"] - old_score, "rules": rules, "signals": outcome.signals})
        if lead["segment"] != old_segment:
            # A segment read from behaviour (e.g. funding content) is a profile change like one made
            # through the API: segment journeys enter on lead_updated, and an event without points
            # publishes no score_changed that could carry it.
            out.append({**base, "id": f"{event_id}:segment", "type": "lead_updated",
                        "properties": {"changed": ["segment"], "source": "behaviour", "event_id": event_id},
                        "score_delta": 0, "rules": [], "signals": []})
        if lead["lifecycle_stage"] != old_stage:
            out.append({**base, "id": f"{event_id}:stage", "type": "stage_changed",
                        "properties": {"old": old_stage, "new": lead["lifecycle_stage"], "event_id": event_id},
                        "score_delta": 0, "rules": rules, "signals": outcome.signals})
        return out

    def _snapshot(self, lead: dict[str, Any], now: datetime) -> dict[str, Any]:
        counters = {k: v for k, v in lead["counters"].items() if k not in ("totals", "fired_today")}
        keys = ("id", "email", "first_name", "last_name", "segment", "score", "grade", "lifecycle_stage",
                "timezone", "locale", "attributes", "consent", "interests", "crm_id", "version")
        return {**{k: lead.get(k) for k in keys}, "counters": counters}

    def _outbox_many(self, s: Session | Connection, messages: list[dict[str, Any]]) -> list[OutboxRow]:
        """Insert the messages into the outbox; returns the rows as `(seq, lead_id, payload, trace)`.

        The trace of the request that caused a message travels with it (W3C traceparent), so
        publishing and the consumers' work join the same trace: an event's own (`_trace`, when its
        caller sent one with the event, as the gateway does for events it sends together), else the
        current one."""
        if not messages:
            return []
        carrier: dict[str, str] = {}
        inject(carrier)
        current = jsoncodec.dumps(carrier) if carrier else None
        values = []
        for m in messages:
            own = m.pop("_trace", None)
            values.append((m["lead_id"], encode(m), jsoncodec.dumps({"traceparent": own}) if own else current))
        # One multi-row INSERT per chunk: a chunk's seqs, ascending, are its rows in order.
        seqs = self._writes.insert(s.connection() if isinstance(s, Session) else s, outbox,
                                   ("lead_id", "payload", "trace"), values, returning="seq")
        return [(seq, *v) for seq, v in zip(seqs, values, strict=True)]

    def _outbox(self, s: Session, message: dict[str, Any]) -> None:
        self._outbox_many(s, [message])

    def announce_model_change(self, s: Session, row: Mapping[str, Any], changed: list[str], now: datetime) -> None:
        """The bus message of a lead a newly published scoring model re-graded (journeys and the CRM
        follow grade and stage as they follow any profile change)."""
        snapshot = lead_dict(row, now)
        self._outbox(s, {
            "id": f"lead_updated:{row['id']}:{row['version']}", "lead_id": row["id"], "type": "lead_updated",
            "properties": {"changed": changed, "source": "scoring_model"},
            "occurred_at": _iso(now), "lead": snapshot, "score_delta": 0, "rules": [], "signals": [],
        })

    # -- outbox, decay, history -----------------------------------------------------------------------

    def pending_outbox(self, limit: int = 2000) -> list[OutboxRow]:
        """`(seq, lead_id, message JSON, trace carrier JSON)` in commit order, published as stored."""
        with self._sessions() as s:
            rows = s.execute(select(outbox.c.seq, outbox.c.lead_id, outbox.c.payload, outbox.c.trace)
                             .order_by(outbox.c.seq).limit(limit)).all()
        return [(r.seq, r.lead_id, r.payload, r.trace) for r in rows]

    def mark_published(self, seqs: Sequence[int]) -> None:
        with self._sessions() as s:
            s.execute(delete(outbox).where(outbox.c.seq.in_(list(seqs))))

    def next_lapse(self) -> datetime | None:
        with self._sessions() as s:
            value = s.execute(select(func.min(leads.c.lapse_due_at))).scalar()
        return _aware(value)

    def run_lapses(self, now: datetime, limit: int = 1000) -> int:
        """Leads that went quiet: decay their score and announce `engagement_lapsed` (re-engagement)."""
        decay = self.model.decay
        with self._sessions() as s:
            # SKIP LOCKED: a lead being written now (an event, an upsert) is decayed by the next sweep;
            # the sweep never waits for a lock, so it cannot deadlock with ingest's key-ordered locks.
            rows = s.execute(select(leads).where(and_(leads.c.lapse_due_at.is_not(None), leads.c.lapse_due_at <= now))
                             .order_by(leads.c.lapse_due_at).limit(limit).with_for_update(skip_locked=True)).all()
            for row in rows:
                lead = _internal(row)
                due = _aware(row.lapse_due_at)
                assert due is not None
                last = lead["last_engaged_at"] or due
                days = (due - last).days
                old = int(lead["score"])
                new = max(int(decay.get("floor", 0)), old + int(decay["points"]))
                lead_snapshot = lead_dict(row, due)
                lead_snapshot["score"] = new
                lead_snapshot["version"] = int(row.version) + 1
                mid = f"lapse:{row.id}:{int(due.timestamp())}"
                if new != old:
                    s.execute(insert(score_changes).values(
                        lead_id=row.id, at=due, delta=new - old, score_after=new, rule="inactivity_decay",
                        reason=f"No engagement for {days} days", event_id=None, model_version=self.model.version))
                s.execute(update(leads).where(leads.c.id == row.id).values(
                    score=new, lapse_due_at=due + timedelta(days=int(decay["every_days"])), updated_at=now,
                    version=leads.c.version + 1))
                self._outbox(s, {"id": mid, "lead_id": row.id, "type": "engagement_lapsed",
                                 "properties": {"days_inactive": days}, "occurred_at": _iso(due),
                                 "lead": lead_snapshot, "score_delta": new - old,
                                 "rules": [{"rule": "inactivity_decay", "points": new - old,
                                            "why": f"No engagement for {days} days"}], "signals": []})
            return len(rows)

    def score_history(self, lead_id: str, limit: int) -> list[Row[Any]]:
        with self._sessions() as s:
            return list(s.execute(select(score_changes).where(score_changes.c.lead_id == lead_id)
                                  .order_by(score_changes.c.id.desc()).limit(limit)).all())[::-1]

    def timeline(self, lead_id: str, limit: int) -> list[dict[str, Any]]:
        """Oldest first, each event followed by the score changes it caused (under a virtual clock many
        share one instant, so the order within an instant has to carry the causality)."""
        with self._sessions() as s:
            evs = s.execute(select(events).where(events.c.lead_id == lead_id)
                            .order_by(events.c.occurred_at, events.c.received_at).limit(limit)).all()
            changes = s.execute(select(score_changes).where(score_changes.c.lead_id == lead_id)
                                .order_by(score_changes.c.id).limit(limit)).all()
            notes = s.execute(select(audit).where(audit.c.lead_id == lead_id).order_by(audit.c.id).limit(limit)).all()
        items: list[dict[str, Any]] = []
        for n in notes:
            if n.erased:
                continue
            items.append({"at": _aware(n.at), "kind": "event", "type": n.action, "id": f"audit:{n.id}",
                          "summary": f"{n.action} (source {n.source})",
                          "details": limits.readable(_loads(n.details), what="audit details")})
        by_event: dict[str, list[dict[str, Any]]] = {}
        loose: list[dict[str, Any]] = []
        for c in changes:
            sign = "+" if c.delta >= 0 else ""
            item = {"at": _aware(c.at), "kind": "score", "type": "score_changed", "id": f"score:{c.id}",
                    "summary": f"score {sign}{c.delta} → {c.score_after}: rule {c.rule} fired: {c.reason}",
                    "details": {"rule": c.rule, "delta": c.delta, "score_after": c.score_after,
                                "reason": c.reason, "event_id": c.event_id, "model_version": c.model_version}}
            if c.event_id:
                by_event.setdefault(c.event_id, []).append(item)
            else:
                loose.append(item)
        for e in evs:
            props = limits.readable(_loads(e.properties, "event properties"), what="event properties")
            shown = ", ".join(f"{k}={v}" for k, v in props.items() if isinstance(v, str | int | float))
            items.append({"at": _aware(e.occurred_at), "kind": "event", "type": e.type, "id": f"event:{e.id}",
                          "summary": f"{e.type}" + (f" ({shown})" if shown else ""),
                          "details": {"event_id": e.id, "properties": props, "source": e.source,
                                      "score_delta": e.score_delta,
                                      "signals": limits.readable(_loads(e.signals), what="signals")}})
            items.extend(by_event.pop(e.id, []))
        items.extend(loose)
        items.extend(i for rest in by_event.values() for i in rest)   # events beyond the limit
        items.sort(key=lambda i: i["at"])   # stable: the order above survives within an instant
        return items


def _event_problem(ev: EventIn) -> str:
    if not ev.lead_id or not LEAD_ID.fullmatch(ev.lead_id):
        return "lead_id is required (1-128 letters, digits or _.:@-)"
    if not EVENT_TYPE.fullmatch(ev.type or ""):
        return "type must be a lower-case word such as page_viewed"
    if not isinstance(ev.properties, dict):
        return "properties must be an object"
    if ev.idempotency_key is not None and len(ev.idempotency_key) > 200:
        return "idempotency_key is longer than 200 characters"
    return ""
