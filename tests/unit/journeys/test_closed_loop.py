"""Sales feedback acts (seed 004's closed loop), and customers get no prospect nurture."""

from __future__ import annotations

from services.journeys.domain.state import ACTIVE, COMPLETED, EXITED
from tests.unit.journeys.test_engine import Harness


def _prospect() -> Harness:
    h = Harness()
    h.lead["lifecycle_stage"] = "lead"  # as scoring's snapshot always has one
    return h


def _status(h: Harness, key: str) -> str | None:
    e = h.state.enrollments.get(key)
    return e.status if e else None


def test_a_disqualified_lead_leaves_prospect_nurture_for_the_recycle_track() -> None:
    h = _prospect()
    h.message("lead_created")
    assert _status(h, "skilled_professional") == ACTIVE and _status(h, "triggers") == ACTIVE
    h.message("disqualified", kind="disqualification", reason="budget")
    assert _status(h, "skilled_professional") == EXITED
    assert h.state.enrollments["skilled_professional"].outcome == "sales_disqualified"
    assert _status(h, "triggers") == EXITED
    assert _status(h, "sales_recycle") == ACTIVE
    assert any("playbook exit sales_disqualified" in t for t in h.transitions), h.transitions
    # The recycle track marks the lead at once, so crm_sync holds sales tasks.
    assert h.lead["attributes"].get("sales_hold") is True
    before = len(h.sent)
    h.advance(days=3)
    assert len(h.sent) == before, "no prospect email after the disqualification"
    h.advance(days=19)
    assert [k for k in h.sent[before:] if ":sales_recycle:" in k and ":email_01:" in k]
    h.advance(days=170)
    assert h.lead["attributes"].get("sales_hold") is None, "the mark is cleared at the end of the track"
    assert _status(h, "sales_recycle") == COMPLETED


def test_a_lost_deal_also_recycles_and_a_won_deal_does_not() -> None:
    h = _prospect()
    h.message("lead_created")
    h.message("opportunity_lost", deal_id="d1", stage="closed_lost")
    assert _status(h, "skilled_professional") == EXITED and _status(h, "sales_recycle") == ACTIVE
    won = _prospect()
    won.message("lead_created")
    won.message("opportunity_won", deal_id="d2", stage="closed_won")
    assert _status(won, "sales_recycle") is None


def test_a_customer_viewing_pricing_gets_no_plan_comparison() -> None:
    h = _prospect()
    h.message("lead_created")
    h.lead["lifecycle_stage"] = "customer"
    h.message("stage_changed", old="sql", new="customer")
    assert _status(h, "triggers") == COMPLETED
    h.advance(days=1)
    h.message("page_viewed", category="pricing")
    assert not [k for k in h.sent if ":pricing_page:" in k]


def test_a_lead_created_as_a_customer_is_not_entered_into_the_trigger_tables() -> None:
    h = _prospect()
    h.lead["lifecycle_stage"] = "customer"
    h.message("lead_created")
    h.message("page_viewed", category="pricing")
    assert _status(h, "triggers") is None and not [k for k in h.sent if ":pricing_page:" in k]


def test_a_prospect_viewing_pricing_still_gets_the_plan_comparison() -> None:
    h = _prospect()
    h.message("lead_created")
    h.message("page_viewed", category="pricing")
    assert [k for k in h.sent if ":pricing_page:" in k]
