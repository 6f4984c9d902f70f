"""Website visitors: anonymous profiles, identification and the merge of their history into a lead.

An anonymous visitor (a first-party id the tracking snippet keeps on the site's domain) is not a lead:
its events are kept in `scoring_visitor_events` and scored by the live model against a profile of its
own (`scoring_visitors.profile`), and nothing about it reaches the bus, so no journey, message, CRM push
or report counts a person nobody can contact yet.

Identification links the visitor to a lead, then merges: every kept event is ingested into the lead
through the ordinary ingest path, in arrival order, with its original time and the idempotency key
`visitor:<visitor>:<seq>`, followed by one `visitor_merged` event that explains the merge on the lead's
timeline. Scoring, journeys and every consumer then see the history as events of the lead, as if it
had been known. Exactly once under retries and crashes: the link is committed first (from then on the
visitor's new events go to the lead, see `collect`), the ingest is one transaction that skips keys it
has seen, and `merged_at` is set only after it; a crash anywhere before that leaves a merge that the
next identification (or the visitor's next event) runs again, adding nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from sqlalchemy.orm import Session

from nurture import errors, jsoncodec, times
from nurture.busmessage import LeadSnapshot
from nurture.clock import Clock
from nurture.db import Database
from nurture.jsontypes import JsonMapping, JsonObject, JsonValue
from nurture.locks import KeyLocks
from services.scoring import storage as st
from services.scoring import storage_visitors as sv
from services.scoring.app.core import ScoringCore
from services.scoring.app.ingest import PUBLISH_WAIT_S, IngestQueue
from services.scoring.app.outbox import Outbox
from services.scoring.domain.profile import apply_outcome
from services.scoring.domain.profiling import LEAD_FIELDS, FieldSpec, Profiling, check_answers, next_fields
from services.scoring.domain.records import EventIn, EventResult, InvalidInput, NotFound, VisitorProfile
from services.scoring.domain.validation import EVENT_TYPE, validate_profile
from services.scoring.storage import SqlRow

log = logging.getLogger(__name__)
MERGED_EVENT = "visitor_merged"
SOURCE = "website"
# Seconds an identification waits for the collect stream to hold nothing answered before it (then 503:
# the caller retries), and a read of the visitor waits (then it answers what is stored).
IDENTIFY_WAIT_S = 10.0
READ_WAIT_S = 2.0


@dataclass(frozen=True)
class VisitorEventIn:
    type: str
    properties: JsonObject
    occurred_at: datetime | None
    client_id: str
    trace: str | None = None


@dataclass
class VisitOutcome:
    """What `collect` did with one visit: kept anonymously (`results`), or, for an identified visitor,
    the events to ingest into its lead (`to_ingest`, in order; `merge_first` when its merge is unfinished)."""

    lead_id: str = ""
    merge_first: bool = False
    results: list[EventResult] = field(default_factory=list)
    to_ingest: list[EventIn] = field(default_factory=list)


@dataclass(frozen=True)
class Visitor:
    lead_id: str
    profile: JsonObject  # the scored profile, with the answers the visitor gave shown in it
    anonymous_events: int


def new_profile(visitor_id: str) -> VisitorProfile:
    """An anonymous visitor's profile: a lead's scored fields, with no email and nobody's consent."""
    return {"id": f"visitor:{visitor_id}", "email": None, "first_name": None, "last_name": None,
            "segment": None, "attributes": {}, "consent": {}, "score": 0, "grade": "D",
            "lifecycle_stage": "subscriber", "counters": {}, "recent": {}, "interests": {}, "version": 0,
            "last_engaged_at": None, "anonymous": True}


def _profile(text: str) -> VisitorProfile:
    """A stored profile (written from a `VisitorProfile`; its time as text, `default=str`)."""
    profile = cast(VisitorProfile, dict(jsoncodec.loads(text or "{}")))
    profile["last_engaged_at"] = times.parse_utc(profile.get("last_engaged_at"))
    return profile


def event_key(visitor_id: str, seq: int) -> str:
    return f"visitor:{visitor_id}:{seq}"


def _check_event(ev: VisitorEventIn) -> str:
    if not EVENT_TYPE.fullmatch(ev.type or ""):
        return "type must be a lower-case word such as page_viewed"
    if not isinstance(ev.properties, dict):
        return "properties must be an object"
    if not ev.client_id or len(ev.client_id) > 64:
        return "client_id is required (at most 64 characters)"
    return ""


class Visitors:
    """The blocking transactions; `VisitorDoor` sequences them. Scores with the core's live model
    (publishing swaps it there)."""

    def __init__(self, db_sessions: Callable[[], AbstractContextManager[Session]], core: ScoringCore) -> None:
        self._sessions = db_sessions
        self._core = core

    def collect(self, visits: Sequence[tuple[str, Sequence[VisitorEventIn]]], now: datetime) -> list[VisitOutcome]:
        """One transaction for many visits. The visitors' rows are locked first, so an event kept
        anonymously here cannot slip past a merge that links the visitor at the same moment."""
        out: list[VisitOutcome] = []
        # A Core transaction with the driver's writes, as the ingest of leads' events (an ORM session and
        # SQLAlchemy's execution of each statement cost more than SQLite's work for a small batch).
        # Its two reads on the driver's cursor too, and on PostgreSQL pipelined: two round trips in all.
        writes = self._core.writes
        with writes.pipelined() as s:
            rows = sv.lock_visitors_for_collect(writes, s, [vid for vid, _ in visits])
            seen = sv.seen_for_collect(writes, s, [(vid, ev.client_id) for vid, events in visits
                                                   if vid in rows and not rows[vid]["lead_id"] for ev in events])
            profiles: dict[str, VisitorProfile] = {}
            counts: dict[str, int] = {}
            new_rows: list[SqlRow] = []
            for vid, events in visits:
                row = rows.get(vid)
                if row is not None and row["lead_id"]:
                    outcome = VisitOutcome(lead_id=row["lead_id"], merge_first=row["merged_at"] is None)
                    outcome.to_ingest = [EventIn(lead_id=row["lead_id"], type=ev.type, properties=ev.properties,
                                                 occurred_at=ev.occurred_at,
                                                 idempotency_key=f"visit:{vid}:{ev.client_id}"[:200],
                                                 source=SOURCE, trace=ev.trace) for ev in events]
                    out.append(outcome)
                    continue
                profile = profiles.get(vid) or (_profile(row["profile"]) if row is not None else new_profile(vid))
                outcome = VisitOutcome()
                for ev in events:
                    problem = _check_event(ev)
                    if problem:
                        outcome.results.append(EventResult(error_code="invalid", error_message=problem))
                        continue
                    if (vid, ev.client_id) in seen:
                        outcome.results.append(EventResult(event_id=f"{vid}:{ev.client_id}", duplicate=True))
                        continue
                    seen.add((vid, ev.client_id))
                    occurred = ev.occurred_at or now
                    scored = self._core.model.score_event(profile, {"type": ev.type, "properties": ev.properties,
                                                              "occurred_at": occurred}, now)
                    apply_outcome(profile, scored)
                    profile.pop("_consent_changes", None)
                    new_rows.append((vid, ev.client_id, ev.type, jsoncodec.dumps(ev.properties), occurred,
                                     scored.delta))
                    counts[vid] = counts.get(vid, 0) + 1
                    outcome.results.append(EventResult(event_id=f"{vid}:{ev.client_id}"))
                profiles[vid] = profile
                out.append(outcome)
            sv.insert_visitor_events(writes, s, new_rows)
            # One statement each for the new visitors and the known ones (a batch holds many visits).
            sv.insert_visitors(writes, s, [(vid, profile, counts.get(vid, 0)) for vid, profile in profiles.items()
                                   if vid not in rows], now)
            sv.save_visitors(writes, s, [(vid, profile, rows[vid]["events"] + counts.get(vid, 0))
                                 for vid, profile in profiles.items() if vid in rows], now)
        return out

    def link_visitor(self, visitor_id: str, lead_id: str, now: datetime) -> tuple[list[EventIn], JsonObject, bool]:
        """Link the visitor to the lead (creating its row when it sent nothing yet) and return its kept
        history as events of the lead, the answers it gave anonymously, and whether it is already merged
        into this lead (nothing to do). A visitor identified as another person later keeps its merged
        history where it went; its new events go to the new lead."""
        with self._sessions() as s:
            row = sv.lock_visitors(s, [visitor_id]).get(visitor_id)
            if row is None:
                sv.insert_visitor(s, visitor_id, new_profile(visitor_id), now)
                row = sv.lock_visitors(s, [visitor_id])[visitor_id]
            if row.lead_id == lead_id and row.merged_at is not None:
                return [], {}, True
            if row.lead_id != lead_id:
                sv.update_visitor(s, visitor_id, lead_id=lead_id, linked_at=now, merged_at=None)
            history = sv.visitor_history(s, visitor_id)
            answers = dict(jsoncodec.loads(row.answers or "{}"))
        events = [EventIn(lead_id=lead_id, type=h.type, properties=dict(jsoncodec.loads(h.properties)),
                          occurred_at=times.utc_or_none(h.occurred_at), idempotency_key=event_key(visitor_id, h.seq),
                          source=SOURCE) for h in history]
        return events, answers, False

    def mark_merged(self, visitor_id: str, lead_id: str, merged: int, now: datetime) -> bool:
        """The merge's last step: the kept history goes (it lives in the lead now). False when the
        visitor was linked to someone else meanwhile (that merge will finish it)."""
        with self._sessions() as s:
            row = sv.lock_visitors(s, [visitor_id]).get(visitor_id)
            if row is None or row.lead_id != lead_id:
                return False
            if row.merged_at is None:
                sv.delete_visitor_history(s, visitor_id)
                sv.update_visitor(s, visitor_id, merged_at=now, merged_events=row.merged_events + merged,
                                  answers="{}")
            return True

    def visitor(self, visitor_id: str) -> Visitor | None:
        with self._sessions() as s:
            row = sv.visitor(s, visitor_id)
        if row is None:
            return None
        answers = dict(jsoncodec.loads(row.answers or "{}"))
        profile: JsonObject = {**_profile(row.profile),
                               "attributes": {k: v for k, v in answers.items() if k not in LEAD_FIELDS},
                               **{k: v for k, v in answers.items() if k in LEAD_FIELDS}}
        return Visitor(lead_id=row.lead_id or "", profile=profile, anonymous_events=row.events - row.merged_events)

    def lead_by_email(self, email: str) -> LeadSnapshot | None:
        with self._sessions() as s:
            row = st.lead_by_email(s, email)
            return st.lead_snapshot(row) if row is not None else None

    def store_answers(self, visitor_id: str, answers: JsonMapping, now: datetime) -> None:
        """Answers an anonymous visitor gave a form, kept until it is identified."""
        with self._sessions() as s:
            row = sv.lock_visitors(s, [visitor_id]).get(visitor_id)
            if row is None:
                sv.insert_visitor(s, visitor_id, new_profile(visitor_id), now)
                kept: JsonObject = {}
            else:
                kept = dict(jsoncodec.loads(row.answers or "{}"))
            sv.update_visitor(s, visitor_id, answers={**kept, **answers}, seen_at=now)


def lead_fields(answers: JsonMapping, current: JsonMapping | None) -> JsonObject:
    """Answers as an upsert's fields: lead fields and attributes, only where the lead has no value
    yet (an identification from a public page must not overwrite what the person told us before)."""
    attrs_now = (current or {}).get("attributes") or {}
    fields: JsonObject = {}
    attributes: JsonObject = {}
    for key, value in answers.items():
        if key in LEAD_FIELDS:
            if not (current or {}).get(key):
                fields[key] = value
        elif attrs_now.get(key) in (None, "", [], {}):
            attributes[key] = value
    if attributes:
        fields["attributes"] = attributes
    return fields


class VisitorDoor:
    """The visitor operations as the servicer calls them: each a sequence of whole transactions."""

    def __init__(self, db: Database, core: ScoringCore, ingest: IngestQueue, outbox: Outbox, clock: Clock,
                 profiling: Profiling) -> None:
        self._db = db
        self._core = core
        self._visitors = Visitors(db.session, core)
        self._ingest = ingest
        self._outbox = outbox
        self._clock = clock
        self.profiling = profiling
        # One merge at a time per visitor in this process (another process's runs concurrently are
        # still harmless: the ingest skips keys it has seen).
        self._locks = KeyLocks()
        # The collect stream's barrier (`CollectStream.stored_up_to_now`), set by the server that reads
        # it: identification and reads wait for the events the gateway answered before them.
        self.stored_up_to_now: Callable[[float], Awaitable[bool]] | None = None

    async def _caught_up(self, timeout: float) -> bool:
        return True if self.stored_up_to_now is None else await self.stored_up_to_now(timeout)

    async def collect(self, visits: list[tuple[str, list[VisitorEventIn]]],
                      wait: float | None = PUBLISH_WAIT_S) -> list[VisitOutcome]:
        """`wait`: how long the identified visitors' events may wait to be on the bus
        (`IngestQueue.submit`); None when their requests were answered already."""
        outcomes = await self._db.run(self._visitors.collect, visits, self._clock.now(), urgent=True)
        for (vid, _), outcome in zip(visits, outcomes, strict=True):
            if outcome.merge_first:
                await self.merge(vid, outcome.lead_id)
        ingest = [ev for o in outcomes for ev in o.to_ingest]
        if ingest:
            results = iter(await self._ingest.submit(ingest, wait))
            for o in outcomes:
                o.results = [next(results) for _ in o.to_ingest]
        return outcomes

    async def store_collected(self, visits: list[tuple[str, list[VisitorEventIn]]]) -> None:
        """A batch of the collect stream, stored as `collect` does. Its requests were answered already, so
        an event refused here (the gateway checked it against the same rules) is only logged."""
        outcomes = await self.collect(visits, wait=None)
        refused = [r for o in outcomes for r in o.results if r.error_code]
        if refused:
            log.warning("collect stream: %d events refused when stored, e.g. %s", len(refused),
                        refused[0].error_message)

    async def identify(self, visitor_id: str, lead_id: str, fields: JsonMapping) -> tuple[str, bool, int]:
        """(lead id, created, events merged now). `lead_id` comes from a verified link; otherwise the
        person is found by email, or made."""
        if not await self._caught_up(IDENTIFY_WAIT_S):
            # The merge must take every event this visitor was answered for: not without them.
            raise errors.Unavailable("the visitor's latest events are not stored yet; retry shortly")
        created = False
        if not lead_id:
            problems = validate_profile(fields, partial=True, segments=self._core.model.segments)
            if not isinstance(fields.get("email"), str):
                problems["email"] = "is required to identify a visitor"
            if problems:
                raise InvalidInput(problems)
            lead_id, created = await self._upsert_by_email(fields)
        elif not await self._db.run(self._core.get_leads, [lead_id], self._clock.now()):
            raise NotFound(lead_id)  # erased since the link was sent: nobody to merge into
        merged = await self.merge(visitor_id, lead_id)
        return lead_id, created, merged

    async def _upsert_by_email(self, fields: JsonMapping) -> tuple[str, bool]:
        email = str(fields["email"])
        found = await self._db.run(self._visitors.lead_by_email, email)
        current = _snapshot_fields(found) if found is not None else None
        extra = {k: v for k, v in fields.items() if k not in ("email", "attributes")}
        wanted = lead_fields({**(fields.get("attributes") or {}), **extra}, current)
        lead, created = await self._db.run(self._core.upsert_lead, current["id"] if current else "",
                                           {**wanted, "email": email} if not current else wanted,
                                           merge=True, source=SOURCE, must_exist=False, now=self._clock.now())
        self._outbox.sweep_soon()
        return lead.id, created

    async def merge(self, visitor_id: str, lead_id: str) -> int:
        """Merge the visitor's anonymous history into the lead, exactly once (see the module doc)."""
        async with self._locks.hold(visitor_id):
            events, answers, done = await self._db.run(self._visitors.link_visitor, visitor_id, lead_id,
                                                       self._clock.now())
            if done:
                return 0
            if answers:
                found = await self._db.run(self._core.get_leads, [lead_id], self._clock.now())
                wanted = lead_fields(answers, _snapshot_fields(found[0]) if found else None)
                if wanted:
                    await self._db.run(self._core.upsert_lead, lead_id, wanted, merge=True, source=SOURCE,
                                       must_exist=True, now=self._clock.now())
                    self._outbox.sweep_soon()
            note = EventIn(lead_id=lead_id, type=MERGED_EVENT, properties={
                "visitor": visitor_id, "events": len(events),
                "note": f"merged {len(events)} anonymous events from visitor {visitor_id}",
                "first_at": times.rfc3339(events[0].occurred_at) if events and events[0].occurred_at else None,
                "last_at": times.rfc3339(events[-1].occurred_at) if events and events[-1].occurred_at else None},
                occurred_at=None, idempotency_key=f"visitor:{visitor_id}:merged:{lead_id}"[:200], source=SOURCE)
            results = await self._ingest.submit([*events, note])
            failed = [r for r in results if r.error_code]
            if failed:
                raise InvalidInput({"merge": f"{len(failed)} events could not be merged: {failed[0].error_message}"})
            merged = sum(1 for r in results[:-1] if not r.duplicate)
            await self._db.run(self._visitors.mark_merged, visitor_id, lead_id, merged, self._clock.now())
            return merged

    async def visitor(self, visitor_id: str) -> tuple[Visitor | None, LeadSnapshot | None]:
        # What the site shows next reflects the page views it was answered for (waited for briefly; past
        # that, what is stored).
        await self._caught_up(READ_WAIT_S)
        found = await self._db.run(self._visitors.visitor, visitor_id)
        if found is None or not found.lead_id:
            return found, None
        leads = await self._db.run(self._core.get_leads, [found.lead_id], self._clock.now())
        return found, leads[0] if leads else None

    async def next_fields(self, visitor_id: str, limit: int) -> list[FieldSpec]:
        found, lead = await self.visitor(visitor_id)
        profile: JsonMapping = _snapshot_fields(lead) if lead is not None else (
            found.profile if found is not None else {})
        return next_fields(self.profiling, profile, limit)

    async def submit_form(self, visitor_id: str, answers: JsonValue) -> tuple[str, int, int]:
        """(lead id or "", answers stored, events merged). An email among the answers identifies the
        visitor; otherwise an identified visitor's lead gets them, an anonymous one keeps them."""
        clean, problems = check_answers(self.profiling, answers)
        if problems:
            raise InvalidInput(problems)
        if "email" in clean:
            lead_id, _, merged = await self.identify(visitor_id, "", {
                "email": clean["email"], "attributes": {k: v for k, v in clean.items() if k != "email"}})
            return lead_id, len(clean), merged
        found, lead = await self.visitor(visitor_id)
        if lead is not None:
            wanted = lead_fields(clean, _snapshot_fields(lead))
            await self._db.run(self._core.upsert_lead, lead.id, wanted, merge=True, source=SOURCE, must_exist=True,
                               now=self._clock.now())
            self._outbox.sweep_soon()
            return lead.id, len(clean), 0
        await self._db.run(self._visitors.store_answers, visitor_id, clean, self._clock.now())
        return "", len(clean), 0


def _snapshot_fields(lead: LeadSnapshot) -> JsonObject:
    return {"id": lead.id, "email": lead.email, "first_name": lead.first_name, "last_name": lead.last_name,
            "attributes": dict(lead.attributes or {})}
