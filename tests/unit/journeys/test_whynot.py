"""\"Why not\": the clauses a lead does not meet, per entry rule and branch rule of a journey."""

from __future__ import annotations

from nurture.rules import reference_evaluate_condition, unmet
from services.journeys.domain.definitions import load_playbook
from services.journeys.domain.state import LeadState
from services.journeys.domain.whynot import why_not


def test_unmet_names_each_failing_clause() -> None:
    cond = {"all": [{"fact": "lead.segment", "eq": "family"}, {"fact": "lead.score", "gte": 30},
                    {"any": [{"fact": "lead.grade", "eq": "A"}, {"fact": "lead.grade", "eq": "B"}]}]}
    facts = {"lead": {"segment": "family", "score": 12, "grade": "C"}}
    assert unmet(cond, facts) == ["lead.score is 12, needs gte 30",
                                  "one of: lead.grade is 'C', needs eq 'A' | lead.grade is 'C', needs eq 'B'"]
    met = {"lead": {"segment": "family", "score": 40, "grade": "B"}}
    assert reference_evaluate_condition(cond, met) and unmet(cond, met) == []
    missing = unmet({"fact": "lead.timeline", "eq": "urgent"}, {"lead": {}})
    assert missing == ["lead.timeline is missing, needs eq 'urgent'"]


def test_why_not_a_family_in_the_skilled_professional_journey() -> None:
    journeys = load_playbook()
    state = LeadState(lead_id="f-1", lead={"segment": "family", "consent": {"email": True}})
    facts = {"lead": state.lead, "event": {"type": "", "properties": {}}, "signals": [], "journeys": {}}
    report = why_not(journeys["skilled_professional"], state, facts)
    assert report["enrolment"] is None
    entry = {r["rule"]: r for r in report["entry"]}["segment_skilled_professional"]
    assert entry["met"] is False and any("lead.segment is 'family'" in u for u in entry["unmet"])
    own = why_not(journeys["family"], state, facts)
    assert {r["rule"]: r for r in own["entry"]}["segment_family"]["met"] is True
    # Branch rules are explained too (trial_nurture's engaged_trial reads the lead's clicks).
    branches = {b["rule"]: b for b in why_not(journeys["trial_nurture"], state, facts)["branches"]}
    assert branches["engaged_trial"]["unmet"] == ["lead.counters.clicks_7d is missing, needs gte 1"]
