""""Why not": for one lead and one journey, which entry conditions and which branch rules the lead does
not meet today, from the lead as the journeys service last saw it (the snapshot every bus message
carries) and the journey's published definition. Pure: no gRPC, SQL or Redis."""

from __future__ import annotations

from nurture.jsontypes import JsonObject
from nurture.rules import unmet
from services.journeys.domain.definitions import Journey
from services.journeys.domain.state import LIVE, LeadState
from services.journeys.domain.steps import BranchStep


def why_not(journey: Journey, state: LeadState | None, facts: JsonObject) -> JsonObject:
    """`{"journey", "version", "enrolment", "entry": [...], "branches": [...]}`: each entry rule with the
    events it waits for and its clauses the lead does not meet (`event.*` clauses depend on the event
    itself, so they are listed as what the event must carry); each branch rule likewise."""
    enrolment = None
    if state is not None:
        found = [e for e in state.enrollments.values() if e.journey == journey.key]
        if found:
            e = max(found, key=lambda x: x.entered_at)
            enrolment = {"status": e.status, "step": e.step, "stage": e.stage, "version": e.version,
                         "live": e.status in LIVE}
    entry = []
    for rule in journey.entry:
        failing = unmet(rule.when, facts)
        lead_side = [f for f in failing if not f.startswith("event.")]
        entry.append({"rule": rule.name, "events": list(rule.events), "met": not lead_side,
                      "unmet": lead_side, "event_must": [f for f in failing if f.startswith("event.")]})
    branches = []
    for step in journey.steps.values():
        if not isinstance(step, BranchStep):
            continue
        for branch in step.rules:
            failing = unmet(branch.when, facts)
            branches.append({"step": step.id, "rule": branch.name, "next": branch.next, "met": not failing,
                             "unmet": failing})
    return {"journey": journey.key, "version": journey.version, "enrolment": enrolment, "entry": entry,
            "branches": branches}
