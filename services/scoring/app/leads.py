"""Leads: profile upserts (one or a batch in one transaction), reads, erasure, history and timeline.

Every write is one transaction that also inserts the bus messages it causes into the outbox, so a
change is stored and announced exactly once even if the process dies at any point (the outbox is
re-published after a crash; consumers drop repeats by message id).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Row
from sqlalchemy.orm import Session

from nurture import jsoncodec, limits
from nurture.busmessage import LeadSnapshot
from nurture.jsontypes import JsonMapping, JsonObject
from nurture.times import utc_or_none as aware
from services.scoring import storage as st
from services.scoring.app.base import CoreBase
from services.scoring.domain import messages
from services.scoring.domain.addresses import FLAGS_ATTRIBUTE, check_email, email_flags
from services.scoring.domain.profile import email_hash, regrade
from services.scoring.domain.records import EmailTaken, InvalidInput, LeadUpsert, NotFound
from services.scoring.domain.validation import LEAD_ID, PROFILE_FIELDS, validate_profile
from services.scoring.storage_visitors import erase_visitors_of_lead


def _check(lead_id: str, fields: JsonMapping, merge: bool) -> JsonMapping:
    """The fields as stored (the email normalised), or InvalidInput with every problem."""
    problems = validate_profile(fields, partial=merge)
    if lead_id and not LEAD_ID.fullmatch(lead_id):
        problems["id"] = "must be 1-128 letters, digits or _.:@-"
    if problems:
        raise InvalidInput(problems)
    email = fields.get("email")
    if isinstance(email, str) and email:
        return {**fields, "email": check_email(email)[0]}
    return fields


class TimelineLine(NamedTuple):
    """A line of a lead's scoring timeline: an event, an audited action or a score change."""

    at: datetime
    kind: str          # event | score
    type: str
    id: str
    summary: str
    details: JsonObject  # what the line is about, shown as JSON (event properties as they came)


class Leads(CoreBase):
    def upsert_lead(
        self, lead_id: str, fields: JsonMapping, *, merge: bool, source: str, must_exist: bool, now: datetime
    ) -> tuple[LeadSnapshot, bool]:
        fields = _check(lead_id, fields, merge)
        with self._sessions() as s:
            return self._upsert(s, lead_id, fields, merge=merge, source=source, must_exist=must_exist, now=now)

    def _upsert(
        self, s: Session, lead_id: str, fields: JsonMapping, *, merge: bool, source: str, must_exist: bool,
        now: datetime,
    ) -> tuple[LeadSnapshot, bool]:
        row = None
        if lead_id:
            row = st.lock_lead(s, lead_id)
        elif fields.get("email") and not must_exist:
            # Match by email before creating a duplicate person (CRM imports, forms).
            row = st.lead_by_email(s, str(fields["email"]))
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
            other = st.email_owner(s, str(email), current["id"])
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
            return st.lead_snapshot(current, now), False
        changes["updated_at"] = now
        changes["version"] = int(current["version"]) + 1
        if created:
            st.insert_lead(s, {**current, **changes})
        else:
            st.update_lead(s, current["id"], changes)
        snapshot = st.lead_snapshot(st.read_lead(s, current["id"]), now)
        kind = "lead_created" if created else "lead_updated"
        changed = sorted(k for k in changes if k not in ("updated_at", "version"))
        st.insert_outbox(self._writes, s, [messages.lead_changed(kind, current["id"], changes["version"], changed,
                                                                 source, now, snapshot)])
        return snapshot, created

    def upsert_leads(
        self, items: Sequence[LeadUpsert], now: datetime
    ) -> list[tuple[LeadSnapshot, bool] | InvalidInput | NotFound | EmailTaken]:
        """Many upserts in one transaction: one commit for a whole batch. Input problems are found
        before anything is written, so a bad lead fails alone."""
        with self._sessions() as s:
            ids = sorted({item.lead_id for item in items if item.lead_id})
            if ids:  # every lead of the batch locked up front, in key order (see storage._LEADS_FOR_UPDATE)
                st.lock_leads(s, ids)
            # The same code as a single upsert, on this transaction's session.
            out: list[tuple[LeadSnapshot, bool] | InvalidInput | NotFound | EmailTaken] = []
            for item in items:
                try:
                    fields = _check(item.lead_id, item.fields, item.merge)
                    out.append(self._upsert(s, item.lead_id, fields, merge=item.merge, source=item.source,
                                            must_exist=item.must_exist, now=now))
                except (InvalidInput, NotFound, EmailTaken) as exc:
                    out.append(exc)
            return out

    def get_leads(self, ids: Sequence[str], now: datetime) -> list[LeadSnapshot]:
        with self._sessions() as s:
            rows = st.lead_rows(s, ids)
        by_id = {r.id: st.lead_snapshot(r, now) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def list_leads(
        self, *, segment: str, min_score: int | None, stage: str, email: str, cursor: str, limit: int, now: datetime
    ) -> tuple[list[LeadSnapshot], str]:
        with self._sessions() as s:
            rows = st.page_of_leads(s, segment=segment, min_score=min_score, stage=stage, email=email,
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

    def announce_model_change(self, s: Session, row: Mapping[str, Any], changed: list[str], now: datetime) -> None:
        """The bus message of a lead a newly published scoring model re-graded (journeys and the CRM
        follow grade and stage as they follow any profile change)."""
        snapshot = st.lead_snapshot(row, now)
        st.insert_outbox(self._writes, s, [messages.lead_changed("lead_updated", row["id"], row["version"], changed,
                                                                 "scoring_model", now, snapshot)])

    def score_history(self, lead_id: str, limit: int) -> list[Row[Any]]:
        with self._sessions() as s:
            return st.score_history(s, lead_id, limit)

    def timeline(self, lead_id: str, limit: int) -> list[TimelineLine]:
        """Oldest first, each event followed by the score changes it caused (under a virtual clock many
        share one instant, so the order within an instant has to carry the causality)."""
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
            items.append(TimelineLine(aware(e.occurred_at) or e.occurred_at, "event", e.type, f"event:{e.id}",
                                      f"{e.type}" + (f" ({shown})" if shown else ""),
                                      {"event_id": e.id, "properties": props, "source": e.source,
                                       "score_delta": e.score_delta,
                                       "signals": limits.readable(st.loads(e.signals), what="signals")}))
            items.extend(by_event.pop(e.id, []))
        items.extend(loose)
        items.extend(i for rest in by_event.values() for i in rest)   # events beyond the limit
        items.sort(key=lambda i: i.at)   # stable: the order above survives within an instant
        return items
