"""Seed stages 6 and 7: a customer hears onboarding, then adoption and referral content."""

from __future__ import annotations

from datetime import timedelta

from services.journeys.domain.state import ACTIVE
from tests.unit.journeys.test_engine import T0, Harness


def _customer(**counters: int) -> Harness:
    h = Harness()
    h.lead["lifecycle_stage"] = "lead"
    h.message("lead_created")
    h.lead["lifecycle_stage"] = "customer"
    h.lead["counters"] = dict(counters)
    h.message("stage_changed", old="sql", new="customer")
    return h


def _steps(h: Harness) -> list[tuple[str, timedelta]]:
    return [(k.split(":")[3], at) for k, at in h.sent_at if ":customer:1:" in k]


def test_a_new_customer_goes_through_onboarding_then_expansion_and_advocacy() -> None:
    h = _customer(interactions_7d=2)
    assert h.state.enrollments["customer"].status == ACTIVE
    assert h.state.enrollments["customer"].stage == "onboarding"
    h.advance(days=70)
    start = h.state.enrollments["customer"].entered_at - T0
    steps = _steps(h)
    assert [s for s, _ in steps] == [f"email_{i:02d}" for i in range(1, 9)]
    assert [at - start for _, at in steps] == [timedelta(days=d) for d in (0, 2, 5, 12, 19, 33, 47, 61)]
    assert h.state.enrollments["customer"].status == "completed"


def test_a_quiet_new_customer_gets_an_onboarding_call_from_a_person() -> None:
    quiet = _customer(interactions_7d=0)
    quiet.advance(days=6)
    assert [k for k in quiet.sent if ":customer:1:task_03:" in k]
    active = _customer(interactions_7d=3)
    active.advance(days=6)
    assert not [k for k in active.sent if ":task_03:" in k]


def test_a_referral_is_thanked_once_a_month() -> None:
    h = _customer(interactions_7d=1)
    h.advance(days=1)
    h.message("referral_sent", friend="someone")
    h.advance(hours=3)
    h.message("referral_sent", friend="someone else")
    assert len([k for k in h.sent if ":referral_thanks:" in k]) == 1


def test_a_prospect_does_not_enter_the_customer_journey() -> None:
    h = Harness()
    h.lead["lifecycle_stage"] = "lead"
    h.message("lead_created")
    h.message("stage_changed", old="lead", new="mql")
    assert "customer" not in h.state.enrollments
