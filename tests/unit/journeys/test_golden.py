"""The engine's whole story for a few leads, compared with a recorded golden file: every transition's
explanation (the answer to "why did this lead get this email"), every effect with its time, and where
each enrolment ends. A change in any decision or explanation shows up here as a readable diff.

After an intended change: `UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/journeys/test_golden.py`,
then read the diff of `golden/*.json` before committing it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.journeys.domain.state import iso
from tests.unit.journeys.test_engine import T0, Harness

GOLDEN = Path(__file__).with_name("golden")


def story(h: Harness) -> dict[str, Any]:
    return {
        "transitions": h.transitions,
        "effects": [f"+{int(at.total_seconds())}s {key}" for key, at in h.sent_at],
        "enrollments": {k: {"status": e.status, "step": e.step, "stage": e.stage, "outcome": e.outcome,
                            "due": iso(e.due) if e.due else None, "engaged": e.engaged, "pace": e.pace}
                        for k, e in sorted(h.state.enrollments.items())},
        "inactive_due": iso(h.state.inactive_due) if h.state.inactive_due else None,
    }


def skilled_professional_month() -> Harness:
    h = Harness("skilled_professional")
    h.message("lead_created")
    h.message("page_viewed", category="pricing")
    h.message("page_viewed", category="country", country="CA")
    h.advance(days=2)
    h.message("email_opened", journey="skilled_professional", step="email_02", message_id="m2")
    h.message("email_clicked", journey="skilled_professional", step="email_02", message_id="m2")
    h.message("webinar_registered", webinar_id="w1", starts_at=iso(h.now + timedelta(days=3)),
              webinar_title="Canada 101", join_url="https://meet.example/w1")
    h.advance(days=3)
    h.message("webinar_attended", webinar_id="w1")
    h.advance(days=5)
    h.lead["attributes"] = {"timeline": "urgent"}
    h.message("form_submitted", form="profile")
    h.message("score_changed", old=60, new=72)
    h.advance(days=20)
    return h


def family_quiet_then_unsubscribed() -> Harness:
    h = Harness("family")
    h.message("lead_created")
    h.advance(days=14)
    inactivity = h.engine.inactivity_due(h.state, h.state.inactive_token, T0 + timedelta(days=14))
    h.transitions += [t.summary for t in inactivity.transitions]
    h.drive()
    h.advance(days=3)
    h.message("trial_started", ends_at=iso(h.now + timedelta(days=14)))
    h.advance(days=2)
    h.message("unsubscribed", scope="nurture")
    h.lead["consent"] = {"email": False}
    h.message("lead_updated")
    h.advance(days=2)
    h.lead["consent"] = {"email": True}
    h.message("subscribed", channel="email")
    h.advance(days=10)
    h.message("subscribed", plan="pro")
    h.advance(days=5)
    return h


def entrepreneur_checkout_and_assessment() -> Harness:
    h = Harness("entrepreneur")
    h.message("lead_created")
    h.message("checkout_started", cart_id="c1", plan="Pro")
    h.advance(hours=30)
    h.message("assessment_started")
    h.message("assessment_completed", assessment="points", score=71)
    h.message("resource_downloaded", resource="g1", resource_title="Investor guide")
    h.message("social_engaged", network="linkedin", post="p1")
    h.advance(days=9)
    return h


SCENARIOS: dict[str, Callable[[], Harness]] = {
    "skilled_professional_month": skilled_professional_month,
    "family_quiet_then_unsubscribed": family_quiet_then_unsubscribed,
    "entrepreneur_checkout_and_assessment": entrepreneur_checkout_and_assessment,
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_engine_tells_the_recorded_story(name: str) -> None:
    got = story(SCENARIOS[name]())
    path = GOLDEN / f"{name}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    expected = json.loads(path.read_text())
    for part in ("effects", "transitions", "enrollments", "inactive_due"):
        assert got[part] == expected[part], part
