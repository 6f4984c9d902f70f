"""The bus messages scoring publishes, built in one place: each carries the lead's snapshot, so
consumers act without calling back. Encoded by `nurture.bus` when the outbox row is written."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.scoring.domain.records import EventIn
from services.scoring.domain.rules import Outcome
from services.scoring.domain.times import iso


def snapshot(lead: dict[str, Any]) -> dict[str, Any]:
    """The snapshot of a lead being scored (the record's JSON already decoded)."""
    counters = {k: v for k, v in lead["counters"].items() if k not in ("totals", "fired_today")}
    keys = ("id", "email", "first_name", "last_name", "segment", "score", "grade", "lifecycle_stage",
            "timezone", "locale", "attributes", "consent", "interests", "crm_id", "version")
    return {**{k: lead.get(k) for k in keys}, "counters": counters}


def lead_changed(kind: str, lead_id: str, version: int, changed: list[str], source: str, now: datetime,
                 lead: dict[str, Any]) -> dict[str, Any]:
    """`lead_created` / `lead_updated`: a profile change (API, CRM, a re-grading model)."""
    return {
        "id": f"{kind}:{lead_id}:{version}", "lead_id": lead_id, "type": kind,
        "properties": {"changed": changed, "source": source}, "occurred_at": iso(now), "lead": lead,
        "score_delta": 0, "rules": [], "signals": [],
    }


def lead_erased(lead_id: str, email_hash: str, now: datetime) -> dict[str, Any]:
    return {
        "id": f"lead_erased:{lead_id}:{int(now.timestamp() * 1e6)}", "lead_id": lead_id,
        "type": "lead_erased", "properties": {"email_hash": email_hash}, "occurred_at": iso(now),
        "lead": {"id": lead_id}, "score_delta": 0, "rules": [], "signals": [],
    }


def engagement_lapsed(lead_id: str, due: datetime, days: int, old: int, new: int,
                      lead: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"lapse:{lead_id}:{int(due.timestamp())}", "lead_id": lead_id, "type": "engagement_lapsed",
            "properties": {"days_inactive": days}, "occurred_at": iso(due),
            "lead": lead, "score_delta": new - old,
            "rules": [{"rule": "inactivity_decay", "points": new - old,
                       "why": f"No engagement for {days} days"}], "signals": []}


def event_messages(
    lead: dict[str, Any], ev: EventIn, event_id: str, occurred: datetime, outcome: Outcome,
    old_score: int, old_stage: str, old_segment: str | None,
) -> list[dict[str, Any]]:
    """The event itself, then what it changed: score, segment (as a profile change), stage."""
    base = {"lead_id": ev.lead_id, "occurred_at": iso(occurred), "lead": snapshot(lead)}
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
