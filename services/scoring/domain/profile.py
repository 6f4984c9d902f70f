"""Pure decisions over one lead's record: its fit grade and segment after a profile change, what a
scored event changes, when it lapses next and what decay leaves of its score. No SQL here."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from nurture import times
from nurture.jsontypes import JsonMapping
from services.scoring.domain.records import LeadRecord, ScoredProfile
from services.scoring.domain.rules import Outcome, ScoringModel, bounded_score


def email_hash(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def regrade(model: ScoringModel, current: Mapping[str, Any], changes: dict[str, Any],
            attributes: dict[str, Any]) -> None:
    """Adds to `changes` the fit grade the changed profile earns and, when it has none, the segment
    its attributes say."""
    profile = {**current, **changes, "attributes": attributes}
    _, grade, _ = model.fit(attributes, profile["email"])
    if grade != current["grade"]:
        changes["grade"] = grade
    if not profile.get("segment"):
        segment = model.classify(attributes)
        if segment:
            changes["segment"] = segment


def apply_outcome(lead: ScoredProfile, outcome: Outcome) -> None:
    # One version per applied event: consumers drop a replayed snapshot older than what they hold.
    lead["version"] = int(lead["version"]) + 1
    lead["score"] = outcome.score_from(int(lead["score"]))
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


def next_lapse(lead: LeadRecord, inactive: timedelta) -> datetime | None:
    last = lead["last_engaged_at"]
    lapse = last + inactive if last is not None else None
    due = lead.get("lapse_due_at")
    if lapse is not None and due is not None:
        # Decay already moved the next lapse past last+inactive; an event that is not
        # engagement (a send, a CRM push) must not set it back, or the same quiet period
        # decays again at every such event.
        lapse = max(lapse, due)
    return lapse


def decayed_score(score: int, decay: JsonMapping) -> int:
    """The score after one decay: lowered by `points`, not below `floor`, and never raised: a lead already
    under the floor (scored before a model with a higher floor was published) went up to it, so going
    quiet gained it points (3 with floor 10: "decay" +7)."""
    return bounded_score(min(score, max(int(decay.get("floor", 0)), score + int(decay["points"]))))
