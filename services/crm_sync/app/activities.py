"""Inbound activities and deals: CRM events to scoring (idempotent by key) and the timeline."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import grpc
from sqlalchemy.orm import Session

from nurture.api.scoring.v1 import scoring_pb2
from nurture.errors import TRANSIENT
from nurture.jsontypes import JsonObject
from nurture.limits import MAX_SAFE_INTEGER
from nurture.rpc import DEADLINE_S
from services.crm_sync import domain
from services.crm_sync import storage as st
from services.crm_sync.app.base import InputError, ScoringUnavailable, UnknownContact
from services.crm_sync.app.proposals import Proposals
from services.crm_sync.tables import inbound

# The CRM's id of an activity or deal is the key of its record: a longer one is refused before the event
# reaches scoring (on PostgreSQL it was taken there, then our record failed, on every retry).
MAX_OBJECT_ID = int(inbound.c.object_id.type.length or 128)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ActivityIn:
    """A sales activity the CRM reports (RecordActivity), as the servicer read it."""

    activity_id: str
    crm_id: str
    lead_id: str
    kind: str
    outcome: str
    body: str
    reason: str
    occurred_at: datetime | None
    modified_at: datetime | None
    properties: JsonObject   # the CRM's own properties of the activity, passed on to scoring verbatim


@dataclass(frozen=True)
class DealIn:
    """A deal's stage the CRM reports (ReportDeal), as the servicer read it."""

    deal_id: str
    crm_id: str
    lead_id: str
    stage: str
    amount: float
    currency: str
    reason: str
    modified_at: datetime | None
    properties: JsonObject   # the CRM's own properties of the deal, passed on verbatim


@dataclass(frozen=True)
class InboundResult:
    """What became of an activity or a deal: recorded | updated | stale | duplicate, and scoring's event."""

    lead_id: str
    status: str
    event_id: str


def _micros(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


# The deal stages a deal reaches once: each is one conversion with its revenue, however often the CRM
# reopens and closes the deal again.
_ONCE_PER_DEAL = ("closed_won",)


# A won deal's later amount (the CRM corrected it, or the deal was reopened and won again) is this event:
# the win itself stays one per deal (scoring answers a second one a duplicate), so the event names the
# win's event (`won_event_id`) and analytics sets that win's revenue to this amount.
AMOUNT_EVENT = "opportunity_amount_changed"


def _deal_amount(stage: str, revenue: float) -> float | None:
    """What our record keeps of a deal's amount to tell a change the platform acts on, beside its stage: a
    won deal's revenue (a won deal whose amount changed is such a change: AMOUNT_EVENT); None otherwise."""
    return revenue if stage in _ONCE_PER_DEAL else None


def _deal_key(crm: str, d: DealIn, lead_id: str, modified_at: datetime) -> str:
    """The idempotency key of a deal stage's event. A win is one per deal (and lead: a deal moved to
    another contact's lead is that lead's win): a deal won, reopened and won again fed a second
    opportunity_won, and every report counted the deal, and its amount, twice; scoring now answers
    the second a duplicate. Every other stage change is one event per CRM modification."""
    if d.stage in _ONCE_PER_DEAL:
        lead = hashlib.sha256(lead_id.encode()).hexdigest()[:16]
        return f"crm:{crm}:deal:{d.deal_id}:{d.stage}:{lead}"
    return f"crm:{crm}:deal:{d.deal_id}:{d.stage}:{_micros(modified_at)}"


class InboundActivities(Proposals):
    """Activities and deals from the CRM (a deal reaching a proposal stage gets its proposal: Proposals)."""

    async def _resolve(self, crm: str, crm_id: str, lead_id: str) -> str:
        row = await self.read(lambda s: st.find_lead(s, crm=crm, crm_id=crm_id or None, lead_id=lead_id or None,
                                                    email=None))
        if row:
            return str(row.lead_id)
        if lead_id and not crm_id:
            try:
                lead = await self.scoring.GetLead(scoring_pb2.GetLeadRequest(id=lead_id), timeout=DEADLINE_S)
                return str(lead.id)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise ScoringUnavailable(exc.details() or exc.code().name) from exc
        raise UnknownContact(f"unknown CRM contact {crm_id!r}" if crm_id else f"unknown lead {lead_id!r}")

    async def _feed(self, crm: str, kind: str, object_id: str, lead_id: str, modified_at: datetime,
                    state: str, event: scoring_pb2.Event | None, summary: str, details: JsonObject,
                    then: Callable[[Session, datetime], object] | None = None,
                    again: Callable[[str], scoring_pb2.Event] | None = None,
                    amount: float | None = None) -> InboundResult:
        """Common path of activities and deals: staleness by the CRM's modification time, the event to
        scoring (idempotent by key), then our record and the timeline. `state` and `amount` are what the
        platform acts on (a version that changes neither is on the timeline only). `again`: when scoring
        answers the event a duplicate (a deal's win heard before), the event that carries what changed
        since, made from the first event's id."""
        # One version of the object at a time across replicas (the lease), so scoring hears its versions
        # in order; the record, judged again under its row lock as it is written, stops a late holder.
        async with self.object_locks.hold(f"{crm}:{kind}:{object_id}"):
            seen = await self.read(lambda s: st.get_inbound(s, crm, kind, object_id))
            if seen and modified_at < seen["modified_at"]:
                await self.writer.submit(lambda s: st.add_timeline(
                    s, lead_id, self.clock.now(), f"{kind}_stale", f"Ignored an out-of-order {kind} {object_id}",
                    {"crm": crm, "object_id": object_id, "modified_at": modified_at,
                     "last_seen": seen["modified_at"]}))
                return InboundResult(lead_id, "stale", "")
            if seen and modified_at == seen["modified_at"]:
                return InboundResult(lead_id, "duplicate", seen["event_id"])
            if seen and (seen["state"], seen["amount"]) == (state, amount):
                event = None  # a later edit that changes nothing the platform acts on: timeline only
            event_id = ""
            if event is not None:
                res = await self._ingest(event)
                event_id = res.event_id
                if res.duplicate and again is not None:
                    await self._ingest(again(event_id))
            now = self.clock.now()

            def write(s: Session) -> str:
                # As stored now, locked: a replica that paused past its lease may have been overtaken here
                # by a newer version (or the same one) since `seen` was read.
                stored = st.get_inbound(s, crm, kind, object_id, lock=True)
                if stored is not None and modified_at <= stored["modified_at"]:
                    if modified_at == stored["modified_at"]:
                        return "duplicate"
                    st.add_timeline(s, lead_id, now, f"{kind}_stale",
                                    f"Ignored an out-of-order {kind} {object_id} (a newer one was recorded first)",
                                    {"crm": crm, "object_id": object_id, "modified_at": modified_at,
                                     "last_seen": stored["modified_at"], "event_id": event_id})
                    return "stale"
                st.put_inbound(s, {"crm": crm, "kind": kind, "object_id": object_id, "lead_id": lead_id,
                                   "modified_at": modified_at, "state": state, "amount": amount,
                                   "event_id": event_id or (stored or {}).get("event_id", "")},
                               exists=stored is not None)
                st.add_timeline(s, lead_id, now, f"{kind}_recorded" if not stored else f"{kind}_updated", summary,
                                {**details, "crm": crm, "event_id": event_id, "modified_at": modified_at})
                if then is not None:
                    then(s, now)  # in the same transaction: a crash leaves both or neither
                return "recorded" if not stored else "updated"

            return InboundResult(lead_id, await self.writer.submit(write), event_id)

    async def _ingest(self, event: scoring_pb2.Event) -> scoring_pb2.EventResult:
        try:
            reply = await self.scoring.IngestEvents(scoring_pb2.IngestRequest(events=[event]), timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in TRANSIENT:
                raise ScoringUnavailable(exc.details() or exc.code().name) from exc
            raise InputError(exc.details() or exc.code().name) from exc
        res: scoring_pb2.EventResult = reply.results[0]
        if res.error_code:
            raise InputError(f"{res.error_code}: {res.error_message}")
        return res

    async def record_activity(self, crm: str, a: ActivityIn) -> InboundResult:
        if not a.activity_id or len(a.activity_id) > MAX_OBJECT_ID:
            raise InputError(f"activity.activity_id is required, at most {MAX_OBJECT_ID} characters")
        if a.kind not in self.cfg.activity_kinds:
            raise InputError(f"activity.kind must be one of {', '.join(self.cfg.activity_kinds)}")
        if not (a.crm_id or a.lead_id):
            raise InputError("activity.crm_id or activity.lead_id is required")
        if a.kind == "disqualification" and not a.reason:
            raise InputError("activity.reason is required for a disqualification")
        now = self.clock.now()
        modified = a.modified_at or a.occurred_at or now
        field_name = "activity.modified_at" if a.modified_at else "activity.occurred_at (no modified_at)"
        if (why := domain.ahead_of_clock(self.cfg, field_name, modified, now)) is not None:
            raise InputError(why)
        lead_id = await self._resolve(crm, a.crm_id, a.lead_id)
        etype = "disqualified" if a.kind == "disqualification" else "sales_activity"
        # The CRM's own properties pass along, under the fields checked here (they cannot replace them).
        props = {**a.properties, "kind": a.kind, "outcome": a.outcome, "reason": a.reason, "body": a.body[:2000],
                 "activity_id": a.activity_id, "crm": crm}
        event = scoring_pb2.Event(lead_id=lead_id, type=etype, properties_json=json.dumps(props), source="crm",
                                  idempotency_key=f"crm:{crm}:activity:{a.activity_id}:{_micros(modified)}")
        if a.occurred_at:
            event.occurred_at.FromDatetime(a.occurred_at)
        return await self._feed(crm, "activity", a.activity_id, lead_id, modified, etype, event,
                                f"Sales {a.kind}" + (f": {a.outcome}" if a.outcome else "")
                                + (f" (reason: {a.reason})" if a.reason else ""),
                                {"activity_id": a.activity_id, "kind": a.kind, "outcome": a.outcome,
                                 "reason": a.reason})

    async def report_deal(self, crm: str, d: DealIn) -> InboundResult:
        if not d.deal_id or len(d.deal_id) > MAX_OBJECT_ID:
            raise InputError(f"deal.deal_id is required, at most {MAX_OBJECT_ID} characters")
        if d.stage not in self.cfg.deal_stages:
            raise InputError(f"deal.stage must be one of {', '.join(self.cfg.deal_stages)}")
        if not (d.crm_id or d.lead_id):
            raise InputError("deal.crm_id or deal.lead_id is required")
        if d.modified_at is None:
            raise InputError("deal.modified_at is required (the CRM's modification time orders deal updates)")
        if not (math.isfinite(d.amount) and 0 <= d.amount <= MAX_SAFE_INTEGER):
            # Revenue is summed over deals in every report: a NaN or one near a double's top (two make
            # infinity) would leave those reports unanswerable.
            raise InputError(f"deal.amount must be a number from 0 to {MAX_SAFE_INTEGER}")
        try:
            revenue, currency = domain.revenue(self.cfg, d.amount, d.currency)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if (why := domain.ahead_of_clock(self.cfg, "deal.modified_at", d.modified_at, self.clock.now())) is not None:
            raise InputError(why)
        lead_id = await self._resolve(crm, d.crm_id, d.lead_id)
        then: Callable[[Session, datetime], object] | None = None
        if d.stage in self.proposals_cfg.file.generate_on_deal_stages:
            # The deal reached a proposal stage: its proposal is made with the deal's record (once per deal).
            lead = await self._lead(lead_id)
            deal = {"deal_id": d.deal_id, "stage": d.stage, "amount": d.amount,
                    "currency": currency, "properties": d.properties}

            def make(s: Session, now: datetime) -> object:
                return self.make_proposal(s, lead_id, lead, plan="", deal=deal, requested_by="deal_stage", now=now)

            then = make
        etype = self.cfg.deal_events.get(d.stage, "sales_activity")
        # The CRM's own properties pass along, under the fields checked here: a properties_json amount of
        # 1e308 or a stage of its own replaced the checked ones in the event scoring and analytics read.
        # `revenue` is the amount in the one currency the reports add up (analytics counts it, not `amount`).
        props = {**d.properties, "deal_id": d.deal_id, "stage": d.stage, "amount": d.amount, "currency": currency,
                 "revenue": revenue, "revenue_currency": self.cfg.revenue_currency,
                 "reason": d.reason, "kind": "deal_stage", "crm": crm}
        event = scoring_pb2.Event(
            lead_id=lead_id, type=etype, properties_json=json.dumps(props), source="crm",
            idempotency_key=_deal_key(crm, d, lead_id, d.modified_at))
        event.occurred_at.FromDatetime(d.modified_at)
        again: Callable[[str], scoring_pb2.Event] | None = None
        if d.stage in _ONCE_PER_DEAL:
            modified = d.modified_at
            # Won before (scoring's duplicate): the win keeps its time and is counted once, but its revenue
            # is this report's amount (a correction in the CRM, 500 then 700, stayed 500 in every report).
            def amount_changed(won_event_id: str) -> scoring_pb2.Event:
                changed = scoring_pb2.Event(
                    lead_id=lead_id, type=AMOUNT_EVENT, source="crm",
                    properties_json=json.dumps({**props, "kind": "deal_amount", "won_event_id": won_event_id}),
                    idempotency_key=f"crm:{crm}:deal:{d.deal_id}:amount:{_micros(modified)}")
                changed.occurred_at.FromDatetime(modified)
                return changed

            again = amount_changed
        return await self._feed(crm, "deal", d.deal_id, lead_id, d.modified_at, d.stage, event,
                                f"Deal {d.deal_id} is {d.stage}"
                                + (f" ({d.amount:g} {currency})" if d.amount else ""),
                                {"deal_id": d.deal_id, "stage": d.stage, "amount": d.amount,
                                 "reason": d.reason}, then=then, again=again,
                                amount=_deal_amount(d.stage, revenue))
