"""Rows of the seed (BorderBridge Lead Nurturing Workflows) that scoring and journeys each carry part of:
the two services read the same event, and must agree on what it is."""

from __future__ import annotations

from typing import Any

import pytest

from nurture.busmessage import BusMessage, LeadSnapshot
from services.journeys.domain.state import iso
from services.scoring.domain.rules import load_model
from tests.unit.journeys.test_engine import Harness

MODEL = load_model()


def _scored_and_published(h: Harness, etype: str, **props: Any) -> tuple[list[str], list[str]]:
    """Score the event with the shipped model, then hand journeys the bus message scoring publishes for it
    (its signals included): the rules that scored it, and what journeys sent or asked for."""
    scored = MODEL.score_event({"score": 0}, {"type": etype, "properties": props, "occurred_at": h.now}, h.now)
    msg = BusMessage(id=f"m{len(h.transitions)}", lead_id=h.state.lead_id, type=etype, properties=props,
                     lead=LeadSnapshot.from_dict(h.lead), occurred_at=iso(h.now), signals=tuple(scored.signals))
    before = len(h.sent)
    out = h.engine.on_message(h.state, msg, h.now)
    h.transitions += [t.summary for t in out.transitions]
    h.drive()
    return [p.rule for p in scored.points], h.sent[before:]


@pytest.mark.parametrize("props", [{"category": "demo"}, {"category": "product_demo"},
                                   {"video": "product-demo-2026"}])
def test_a_demo_video_the_model_scores_sends_the_feature_follow_up(props: dict[str, str]) -> None:
    """Seed, Engagement Acceleration Triggers: "Watches product demo video | +7 points | Send feature-specific
    follow-up content". A video categorised product_demo, or named as a demo, scored +7 and sent nothing:
    the trigger row read category `demo` only."""
    h = Harness()
    h.message("lead_created")
    rules, sent = _scored_and_published(h, "video_watched", **props)
    assert "demo_video" in rules
    assert [k for k in sent if ":triggers:" in k and ":demo_video:" in k], (props, sent)


def test_a_video_that_is_no_demo_is_neither_scored_nor_followed_up() -> None:
    h = Harness()
    h.message("lead_created")
    rules, sent = _scored_and_published(h, "video_watched", video="success-story-ana", category="stories")
    assert "demo_video" not in rules
    assert not [k for k in sent if ":demo_video:" in k]
