"""The bus messages scoring publishes, built in one place: each carries the lead's snapshot, so
consumers act without calling back. Typed records of the bus contract (nurture.busmessage), encoded by
it when the outbox row is written."""

from __future__ import annotations

from datetime import datetime

from nurture import times
from nurture.busmessage import BusMessage, LeadSnapshot, RuleHit
from nurture.jsontypes import JsonMapping
from services.scoring.domain.records import EventIn, LeadRecord
from services.scoring.domain.rules import Outcome

iso = times.rfc3339_or_none

_HIDDEN_COUNTERS = ("totals", "fired_today")  # the model's own bookkeeping, not engagement figures


def snapshot(lead: LeadRecord) -> LeadSnapshot:
    """The snapshot of a lead being scored (the record's JSON already decoded), with its creation and
    last engagement times (not `updated_at`, which ingest does not read back): analytics times a lead's
    first lifecycle change (`stage_changed`) from its creation, and crm_sync pushes the last engagement
    to the CRM from the snapshot of the lead's latest message (without them: 0 hours, and an empty
    `nurture_last_engaged_at` after every event)."""
    return LeadSnapshot(
        id=lead["id"], email=lead.get("email"), first_name=lead.get("first_name"), last_name=lead.get("last_name"),
        segment=lead.get("segment"), timezone=lead.get("timezone"), locale=lead.get("locale"),
        attributes=lead.get("attributes") or {}, consent=lead.get("consent") or {}, score=lead.get("score"),
        grade=lead.get("grade"), lifecycle_stage=lead.get("lifecycle_stage"),
        counters={k: v for k, v in lead["counters"].items() if k not in _HIDDEN_COUNTERS},
        interests=lead.get("interests") or {}, crm_id=lead.get("crm_id"), version=lead.get("version"),
        created_at=iso(lead.get("created_at")), last_engaged_at=iso(lead.get("last_engaged_at")),
    )


def lead_changed(kind: str, lead_id: str, version: int, changed: list[str], source: str, now: datetime,
                 lead: LeadSnapshot) -> BusMessage:
    """`lead_created` / `lead_updated`: a profile change (API, CRM, a re-grading model)."""
    return BusMessage(id=f"{kind}:{lead_id}:{version}", lead_id=lead_id, type=kind,
                      properties={"changed": changed, "source": source}, occurred_at=iso(now), lead=lead)


def model_stage_changed(lead_id: str, version: int, old: str, new: str, signals: list[str], now: datetime,
                        lead: LeadSnapshot) -> BusMessage:
    """`stage_changed` of a lead a newly published scoring model moved (its thresholds reached), as an
    event's stage change is published, with the stage's signal."""
    return BusMessage(id=f"stage_changed:{lead_id}:{version}", lead_id=lead_id, type="stage_changed",
                      properties={"old": old, "new": new, "source": "scoring_model"}, occurred_at=iso(now),
                      lead=lead, signals=tuple(signals))


def lead_erased(lead_id: str, email_hash: str, now: datetime) -> BusMessage:
    return BusMessage(id=f"lead_erased:{lead_id}:{int(now.timestamp() * 1e6)}", lead_id=lead_id, type="lead_erased",
                      properties={"email_hash": email_hash}, occurred_at=iso(now), lead=LeadSnapshot(id=lead_id))


def engagement_lapsed(lead_id: str, due: datetime, days: int, old: int, new: int,
                      lead: LeadSnapshot) -> BusMessage:
    return BusMessage(id=f"lapse:{lead_id}:{int(due.timestamp())}", lead_id=lead_id, type="engagement_lapsed",
                      properties={"days_inactive": days}, occurred_at=iso(due), lead=lead, score_delta=new - old,
                      rules=(RuleHit(rule="inactivity_decay", points=new - old, why=f"No engagement for {days} days"),))


def event_messages(
    lead: LeadRecord, ev: EventIn, event_id: str, occurred: datetime, outcome: Outcome,
    old_score: int, old_stage: str, old_segment: str | None, old_consent: JsonMapping | None = None,
) -> list[BusMessage]:
    """The event itself, then what it changed: score, segment and consent (as a profile change), stage.
    They share one snapshot. `old_consent`: the lead's consent before the event (None: not compared)."""
    lead_id, at, snap = ev.lead_id, iso(occurred), snapshot(lead)
    rules = tuple(RuleHit(rule=p.rule, points=p.points, why=p.why) for p in outcome.points)
    signals = tuple(outcome.signals)
    out = [BusMessage(id=event_id, lead_id=lead_id, type=ev.type, properties=ev.properties, occurred_at=at, lead=snap,
                      score_delta=outcome.delta, rules=rules, signals=signals, source=ev.source)]
    if lead["score"] != old_score:
        out.append(BusMessage(id=f"{event_id}:score", lead_id=lead_id, type="score_changed",
                              properties={"old": old_score, "new": lead["score"], "event_id": event_id},
                              occurred_at=at, lead=snap, score_delta=lead["score"] - old_score, rules=rules,
                              signals=signals))
    # A segment read from behaviour (e.g. funding content), or consent an event gave or withdrew (an
    # explicit opt-in, `subscribed` with channel email), is a profile change like one made through the
    # API: the segment journeys enter on lead_updated, and an event without points publishes no
    # score_changed that could carry it (a lead who opted in by the event was never welcomed).
    consent_moved = old_consent is not None and dict(lead["consent"] or {}) != dict(old_consent)
    changed = (["consent"] if consent_moved else []) + (["segment"] if lead["segment"] != old_segment else [])
    if changed:
        out.append(BusMessage(id=f"{event_id}:{'segment' if 'segment' in changed else 'consent'}", lead_id=lead_id,
                              type="lead_updated",
                              properties={"changed": changed, "source": "behaviour", "event_id": event_id},
                              occurred_at=at, lead=snap))
    if lead["lifecycle_stage"] != old_stage:
        out.append(BusMessage(id=f"{event_id}:stage", lead_id=lead_id, type="stage_changed",
                              properties={"old": old_stage, "new": lead["lifecycle_stage"], "event_id": event_id},
                              occurred_at=at, lead=snap, rules=rules, signals=signals))
    return out
