"""Leads: profile upserts (one or a batch in one transaction), reads, erasure, history and timeline.

Every write is one transaction that also inserts the bus messages it causes into the outbox, so a
change is stored and announced exactly once even if the process dies at any point (the outbox is
re-published after a crash; consumers drop repeats by message id).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Row
from sqlalchemy.orm import Session

from nurture import jsoncodec, limits, times
from nurture.busmessage import BusMessage, LeadSnapshot
from nurture.db import DriverWrites
from nurture.jsontypes import JsonMapping, JsonObject
from nurture.times import utc_or_none as aware
from services.scoring import storage as st
from services.scoring.app.base import CoreBase
from services.scoring.app.outbox import HandOff, placed
from services.scoring.domain import messages
from services.scoring.domain.addresses import FLAGS_ATTRIBUTE, check_email, email_flags
from services.scoring.domain.profile import email_hash, regrade
from services.scoring.domain.records import EmailTaken, InvalidInput, LeadUpsert, NotFound, OutboxRow, Stale
from services.scoring.domain.validation import LEAD_ID, PROFILE_FIELDS, validate_profile
from services.scoring.storage_visitors import erase_visitors_of_lead

# The stored column's width (tables.leads.source_record).
SOURCE_RECORD_CHARS = 300


def _check(item: LeadUpsert, segments: Collection[str]) -> JsonMapping:
    """The fields as stored (the email normalised), or InvalidInput with every problem."""
    lead_id, fields = item.lead_id, item.fields
    problems = validate_profile(fields, partial=item.merge, segments=segments)
    if lead_id and not LEAD_ID.fullmatch(lead_id):
        problems["id"] = "must be 1-128 letters, digits or _.:@-"
    if len(item.source_record) > SOURCE_RECORD_CHARS:
        problems["source_record"] = f"must be at most {SOURCE_RECORD_CHARS} characters"
    if problems:
        raise InvalidInput(problems)
    email = fields.get("email")
    if isinstance(email, str) and email:
        return {**fields, "email": check_email(email)[0]}
    return fields


def _source_stamp(row: Mapping[str, Any] | None, item: LeadUpsert, now: datetime) -> dict[str, Any]:
    """The source columns to store with the lead for this upsert ({} when nothing to store), or Stale
    when the lead already has a later modification of the same source record. Called with the lead's
    row locked, so of two deliveries of one record racing (two CRM webhooks at two replicas), the one
    applied last is never the older."""
    at = item.source_modified_at
    if at is None or not item.source_record:
        return {}
    if row is not None and row["source_record"] == item.source_record:
        last = aware(row["source_modified_at"])
        if last is not None and at < last:
            raise Stale(st.lead_snapshot(row, now))
        if last == at:
            return {}
    return {"source_record": item.source_record, "source_modified_at": at}


class TimelineLine(NamedTuple):
    """A line of a lead's scoring timeline: an event, an audited action or a score change."""

    at: datetime
    kind: str          # event | score
    type: str
    id: str
    summary: str
    details: JsonObject  # what the line is about, shown as JSON (event properties as they came)


class _Batch:
    """The leads one transaction's upserts touch, read up front: by id (locked, in key order: see
    storage._LEADS_FOR_UPDATE) and by email (matching and the one-person-one-email check). Each upsert
    reads and changes them here; `flush` writes the new and changed rows in a few statements. A batch
    of CRM contacts had cost five statements per lead (lock, match, check, insert, read back)."""

    def __init__(self, s: Session, ids: Sequence[str], emails: Sequence[str], matched: Sequence[str]) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self._emails: dict[str, set[str]] = {}
        self._new: set[str] = set()
        self._changed: dict[str, set[str]] = {}
        # The addresses an upsert without an id matches or creates a lead by: first, before any lead
        # row's lock (every batch takes them in that order).
        st.lock_emails(s, matched)
        for row in st.lock_lead_rows(s, sorted(set(ids))) if ids else []:
            self._keep(dict(row._mapping))
        for row in st.leads_by_emails(s, sorted(set(emails))) if emails else []:
            if row.id not in self.rows:
                self._keep(dict(row._mapping))

    def _keep(self, row: dict[str, Any]) -> None:
        self.rows[row["id"]] = row
        if row["email"]:
            self._emails.setdefault(str(row["email"]).lower(), set()).add(row["id"])

    def by_email(self, email: str) -> dict[str, Any] | None:
        # Addresses that differ only in case are one mailbox; of several leads (from before that rule),
        # the first by id.
        ids = self._emails.get(email.lower())
        return self.rows[min(ids)] if ids else None

    def email_owner(self, email: str, other_than: str) -> str | None:
        """The id of another lead that has this email, or None."""
        return min((i for i in self._emails.get(email.lower(), ()) if i != other_than), default=None)

    def insert(self, row: dict[str, Any]) -> None:
        self._keep(row)
        self._new.add(row["id"])

    def update(self, row: dict[str, Any], changes: dict[str, Any]) -> None:
        if "email" in changes and row["email"]:
            self._emails.get(str(row["email"]).lower(), set()).discard(row["id"])
        row.update(changes)
        if row["email"]:
            self._emails.setdefault(str(row["email"]).lower(), set()).add(row["id"])
        if row["id"] not in self._new:
            self._changed.setdefault(row["id"], set()).update(changes)

    def flush(self, writes: DriverWrites, s: Session) -> None:
        conn = s.connection()
        if self._new:
            st.insert_leads(writes, conn, [self.rows[i] for i in sorted(self._new)])
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for lead_id, changed in sorted(self._changed.items()):
            shapes.setdefault(tuple(sorted(changed)), []).append(self.rows[lead_id])
        for shape, rows in shapes.items():
            st.update_leads(writes, conn, shape, rows)


class Leads(CoreBase):
    def upsert_lead(
        self, lead_id: str, fields: JsonMapping, *, merge: bool, source: str, must_exist: bool, now: datetime
    ) -> tuple[LeadSnapshot, bool]:
        out = self.upsert_leads([LeadUpsert(lead_id, fields, merge, source, must_exist)], now)[0]
        if isinstance(out, Exception):
            raise out
        return out

    def _upsert(
        self, batch: _Batch, item: LeadUpsert, fields: JsonMapping, *, now: datetime, s: Session,
        messages_out: list[BusMessage],
    ) -> tuple[LeadSnapshot, bool]:
        lead_id, merge, source, must_exist = item.lead_id, item.merge, item.source, item.must_exist
        row: dict[str, Any] | None = None
        if lead_id:
            row = batch.rows.get(lead_id)
        elif fields.get("email") and not must_exist:
            # Match by email before creating a duplicate person (CRM imports, forms).
            row = batch.by_email(str(fields["email"]))
        if row is None and must_exist:
            raise NotFound(lead_id)
        stamp = _source_stamp(row, item, now)
        created = row is None
        current: dict[str, Any] = dict(row) if row else {
            "id": lead_id or uuid.uuid4().hex, "attributes": "{}", "consent": "{}", "counters": "{}",
            "recent": "{}", "interests": "{}", "score": 0, "grade": "D", "version": 0,
            "lifecycle_stage": self.model.stage_order[0], "created_at": now, "last_engaged_at": None,
            "lapse_due_at": None, "source_record": None, "source_modified_at": None,
            **{f: None for f in PROFILE_FIELDS},
        }
        email = fields.get("email")
        if email and str(email).lower() != str(current["email"] or "").lower():
            other = batch.email_owner(str(email), current["id"])
            if other is not None:
                raise EmailTaken(str(email), str(other))
        changes: dict[str, Any] = {}
        for name in PROFILE_FIELDS:
            if name in fields and fields[name] != current[name]:
                changes[name] = fields[name]
        attributes = st.loads(current["attributes"])
        if "attributes" in fields:
            new_attrs = {**attributes, **fields["attributes"]} if merge else dict(fields["attributes"])
            new_attrs = {k: v for k, v in new_attrs.items() if v is not None}
            if new_attrs != attributes:
                changes["attributes"] = jsoncodec.dumps(new_attrs)
                attributes = new_attrs
        if "email" in fields or "attributes" in fields or created:
            # Role and disposable addresses are flagged (addresses.yaml), not refused; the flags follow
            # the address, whatever a caller put in the attribute.
            address = changes.get("email", current["email"])
            flags = email_flags(address) if address else []
            kept = {k: v for k, v in attributes.items() if k != FLAGS_ATTRIBUTE}
            flagged = {**kept, FLAGS_ATTRIBUTE: flags} if flags else kept
            if flagged != attributes:
                changes["attributes"] = jsoncodec.dumps(flagged)
                attributes = flagged
        consent = st.loads(current["consent"])
        if "consent" in fields and fields["consent"] is not None:
            new_consent = {**consent, **fields["consent"]}
            if new_consent != consent:
                changes["consent"] = jsoncodec.dumps(new_consent)
                for channel, given in fields["consent"].items():
                    if consent.get(channel) != given:
                        st.add_consent_audit(s, current["id"], now, source, channel, given)
        regrade(self.model, current, changes, attributes)
        if not created and not changes:
            if stamp:  # the source moved on with nothing to change here: a later older write is stale
                assert row is not None
                batch.update(row, stamp)
            return st.lead_snapshot(current, now), False
        changes["updated_at"] = now
        changes["version"] = int(current["version"]) + 1
        if created:
            current.update(changes, **stamp)
            batch.insert(current)
        else:
            assert row is not None
            batch.update(row, {**changes, **stamp})
            current = row
        snapshot = st.lead_snapshot(current, now)
        kind = "lead_created" if created else "lead_updated"
        changed = sorted(k for k in changes if k not in ("updated_at", "version"))
        messages_out.append(messages.lead_changed(kind, current["id"], changes["version"], changed, source, now,
                                                  snapshot))
        return snapshot, created

    def upsert_leads(
        self, items: Sequence[LeadUpsert], now: datetime, published: Sequence[int] = (),
        reserve: Callable[[], HandOff] | None = None,
    ) -> list[tuple[LeadSnapshot, bool] | InvalidInput | NotFound | EmailTaken | Stale]:
        """Many upserts in one transaction: one commit for a whole batch. Input problems are found
        before anything is read or written, so a bad lead fails alone.

        With `reserve` (the servicer's way, `Outbox.write`), the caller publishes the outbox rows from
        memory as an ingest does: the place is taken once every lead with a message is locked (written),
        and it carries first the rows of the batch's existing leads still in the outbox (committed
        before, perhaps by a replica that died before publishing them: so that a retry at another
        replica, which changes nothing, is answered only once the first attempt is on the bus), then
        the rows written. `published` are outbox rows published since, deleted here."""
        places: list[HandOff] = []  # the one `reserve` gave, once taken
        out, _ = placed(places, lambda: self._upsert_leads(items, now, published, reserve, places))
        return out

    def _upsert_leads(
        self, items: Sequence[LeadUpsert], now: datetime, published: Sequence[int],
        reserve: Callable[[], HandOff] | None, places: list[HandOff],
    ) -> tuple[list[tuple[LeadSnapshot, bool] | InvalidInput | NotFound | EmailTaken | Stale], list[OutboxRow],
               list[OutboxRow]]:
        checked: list[JsonMapping | InvalidInput] = []
        for item in items:
            try:
                checked.append(_check(item, self.model.segment_names))
            except InvalidInput as exc:
                checked.append(exc)
        ids = [item.lead_id for item, f in zip(items, checked, strict=True)
               if item.lead_id and not isinstance(f, InvalidInput)]
        emails = [str(f["email"]) for f in checked if not isinstance(f, InvalidInput) and f.get("email")]
        matched = [str(f["email"]) for item, f in zip(items, checked, strict=True)
                   if not item.lead_id and not item.must_exist and not isinstance(f, InvalidInput) and f.get("email")]
        out: list[tuple[LeadSnapshot, bool] | InvalidInput | NotFound | EmailTaken | Stale] = []
        again: list[OutboxRow] = []
        with self._sessions() as s:
            if published:
                st.delete_outbox(self._writes, s.connection(), published)
            batch = _Batch(s, ids, emails, matched)
            announced: list[BusMessage] = []
            for item, fields in zip(items, checked, strict=True):
                if isinstance(fields, InvalidInput):
                    out.append(fields)
                    continue
                try:
                    out.append(self._upsert(batch, item, fields, now=now, s=s, messages_out=announced))
                except (NotFound, EmailTaken, Stale) as exc:
                    out.append(exc)
            batch.flush(self._writes, s)
            if reserve is not None:
                # A stale upsert too: the later write it lost to may be another replica's, not yet published.
                known = sorted({r[0].id for r in out if isinstance(r, tuple) and not r[1]}
                               | {r.lead.id for r in out if isinstance(r, Stale)})
                again = st.outbox_of_leads(self._writes, s.connection(), known) if known else []
            written = st.insert_outbox(self._writes, s, announced)
            if reserve is not None:  # every lead with a message is written, so locked, until the commit
                places.append(reserve())
        return out, again, written

    def get_leads(self, ids: Sequence[str], now: datetime) -> list[LeadSnapshot]:
        with self._sessions() as s:
            rows = st.lead_rows(s, ids)
        by_id = {r.id: st.lead_snapshot(r, now) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def list_leads(
        self, *, segment: str, min_score: int | None, stage: str, email: str, cursor: str, limit: int, now: datetime,
        q: str = "",
    ) -> tuple[list[LeadSnapshot], str]:
        with self._sessions() as s:
            rows = st.page_of_leads(s, segment=segment, min_score=min_score, stage=stage, email=email, q=q,
                                    cursor=cursor, limit=limit)
        page = [st.lead_snapshot(r, now) for r in rows[:limit]]
        return page, (page[-1].id if len(rows) > limit else "")

    def erase_lead(self, lead_id: str, now: datetime) -> tuple[bool, str]:
        with self._sessions() as s:
            row = st.lock_lead(s, lead_id)
            if row is None:
                return False, ""
            hashed = email_hash(row.email) if row.email else ""
            st.erase_lead(s, lead_id, now, hashed)
            erase_visitors_of_lead(s, lead_id)
            st.insert_outbox(self._writes, s, [messages.lead_erased(lead_id, hashed, now)])
            return True, hashed

    def announce_model_change(self, s: Session, row: Mapping[str, Any], changes: Mapping[str, list[str]],
                              signals: list[str], now: datetime) -> None:
        """The bus messages of a lead a newly published scoring model re-graded (journeys and the CRM
        follow grade and stage as they follow any profile change); a lifecycle stage it moved is also
        a `stage_changed` with the stage's signal, as an event's is: analytics counts the arrival
        (qualification per week) and crm_sync hands a new MQL to sales."""
        snapshot = st.lead_snapshot(row, now)
        out = [messages.lead_changed("lead_updated", row["id"], row["version"], sorted(changes), "scoring_model",
                                     now, snapshot)]
        if "lifecycle_stage" in changes:
            old, new = changes["lifecycle_stage"]
            out.append(messages.model_stage_changed(row["id"], row["version"], old, new, signals, now, snapshot))
        st.insert_outbox(self._writes, s, out)

    def score_history(self, lead_id: str, limit: int) -> list[Row[Any]]:
        with self._sessions() as s:
            return st.score_history(s, lead_id, limit)

    def timeline(self, lead_id: str, limit: int) -> list[TimelineLine]:
        """Oldest first, each event followed by the score changes it caused (under a virtual clock many
        share one instant, so the order within an instant has to carry the causality). An event is shown
        at the time it says it happened, but never after the platform recorded it (`received_at`), nor
        are its score changes: a CRM's won deal is dated by the CRM's clock, which may run ahead of ours,
        and what it caused elsewhere (the stage, a journey's goal) is stamped with our clock when it
        happened. The time it claims is then a detail (`occurred_at`)."""
        with self._sessions() as s:
            evs, changes, notes = st.timeline_rows(s, lead_id, limit)
        items: list[TimelineLine] = []
        for n in notes:
            if n.erased:
                continue
            items.append(TimelineLine(aware(n.at) or n.at, "event", n.action, f"audit:{n.id}",
                                      f"{n.action} (source {n.source})",
                                      limits.readable(st.loads(n.details), what="audit details")))
        by_event: dict[str, list[TimelineLine]] = {}
        loose: list[TimelineLine] = []
        for c in changes:
            sign = "+" if c.delta >= 0 else ""
            item = TimelineLine(aware(c.at) or c.at, "score", "score_changed", f"score:{c.id}",
                                f"score {sign}{c.delta} → {c.score_after}: rule {c.rule} fired: {c.reason}",
                                {"rule": c.rule, "delta": c.delta, "score_after": c.score_after,
                                 "reason": c.reason, "event_id": c.event_id, "model_version": c.model_version})
            if c.event_id:
                by_event.setdefault(c.event_id, []).append(item)
            else:
                loose.append(item)
        for e in evs:
            props = limits.readable(st.loads(e.properties, "event properties"), what="event properties")
            shown = ", ".join(f"{k}={v}" for k, v in props.items() if isinstance(v, str | int | float))
            occurred, received = aware(e.occurred_at) or e.occurred_at, aware(e.received_at) or e.received_at
            details: JsonObject = {"event_id": e.id, "properties": props, "source": e.source,
                                   "score_delta": e.score_delta,
                                   "signals": limits.readable(st.loads(e.signals), what="signals")}
            if occurred > received:
                details["occurred_at"] = times.rfc3339(occurred)
            at = min(occurred, received)
            items.append(TimelineLine(at, "event", e.type, f"event:{e.id}",
                                      f"{e.type}" + (f" ({shown})" if shown else ""), details))
            items.extend(i if i.at <= at else i._replace(at=at) for i in by_event.pop(e.id, []))
        items.extend(loose)
        items.extend(i for rest in by_event.values() for i in rest)   # events beyond the limit
        items.sort(key=lambda i: i.at)   # stable: the order above survives within an instant
        return items
