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


def test_the_recycle_mark_holds_tasks_until_it_is_cleared() -> None:
    hold = domain.task_hold(CFG, _facts(sales_hold=True))
    assert hold is not None and hold.rule == "in_sales_recycle"
    assert domain.task_hold(CFG, _facts(sales_hold=False)) is None
    assert domain.task_hold(CFG, _facts()) is None


@pytest.mark.parametrize("event_type", ["opportunity_won", "sales_activity", "page_viewed"])
def test_other_events_hold_nothing(event_type: str) -> None:
    assert domain.task_hold(CFG, _facts(event_type)) is None
