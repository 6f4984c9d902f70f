"""sync.yaml's task holds: which sales feedback stops a task, read from the facts a task is made on."""

from __future__ import annotations

import pytest

from services.crm_sync import domain

CFG = domain.load_config()


def _facts(event_type: str = "page_viewed", **attributes: object) -> dict[str, object]:
    return domain.facts_for({"id": "l", "lifecycle_stage": "sql", "attributes": attributes}, ["sales_alert"],
                            {"type": event_type, "properties": {}})


@pytest.mark.parametrize("event_type", ["disqualified", "opportunity_lost"])
def test_sales_feedback_holds_the_tasks_of_its_own_message(event_type: str) -> None:
    hold = domain.task_hold(CFG, _facts(event_type))
    assert hold is not None and hold.rule == "sales_feedback_now"


def _facts_at(stage: str, event_type: str = "page_viewed") -> dict[str, object]:
    return domain.facts_for({"id": "l", "lifecycle_stage": stage, "attributes": {}}, ["sales_alert"],
                            {"type": event_type, "properties": {}})


def _recycle(status: str) -> list[dict[str, str]]:
    return [{"journey": "skilled_professional", "status": "exited", "stage": "welcome"},
            {"journey": "sales_recycle", "status": status, "stage": "pause"}]


@pytest.mark.parametrize("journeys", [None, _recycle("active")], ids=["no_track", "in_the_track"])
def test_a_recycled_lead_holds_tasks_in_the_recycle_track_or_not(journeys: list[dict[str, str]] | None) -> None:
    # A lead without email consent never enters the track: its stage holds all the same.
    hold = domain.task_hold(CFG, _facts_at("recycled"), journeys)
    assert hold is not None and hold.rule == "sales_recycled"


@pytest.mark.parametrize("stage", ["mql", "customer"])
def test_a_lead_that_re_qualifies_or_buys_is_not_held_by_a_running_track(stage: str) -> None:
    assert domain.task_hold(CFG, _facts_at(stage), _recycle("active")) is None
    assert domain.task_hold(CFG, _facts_at(stage), _recycle("paused")) is None


@pytest.mark.parametrize("status", ["completed", "exited"])
def test_the_mark_the_track_left_holds_nothing(status: str) -> None:
    # A won deal ends the track (outcome converted) before its last step clears attributes.sales_hold:
    # that mark held every sales task of the new customer for good.
    assert domain.task_hold(CFG, _facts(sales_hold=True), _recycle(status)) is None
    assert domain.task_hold(CFG, _facts(sales_hold=True)) is None
    assert domain.task_hold(CFG, _facts()) is None


def test_a_live_enrolment_of_a_key_wins_over_an_ended_one() -> None:
    statuses = domain.journey_statuses([{"journey": "webinar", "status": "active"},
                                        {"journey": "webinar", "status": "completed"}, "junk", {"journey": 5}])
    assert statuses == {"webinar": "active"}


@pytest.mark.parametrize("event_type", ["opportunity_won", "sales_activity", "page_viewed"])
def test_other_events_hold_nothing(event_type: str) -> None:
    assert domain.task_hold(CFG, _facts(event_type)) is None
