"""Rows of the seed (BorderBridge Lead Nurturing Workflows) that scoring and journeys each carry part of:
the two services read the same event, and must agree on what it is."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from nurture.busmessage import BusMessage, LeadSnapshot
from services.journeys.domain.state import iso
from services.scoring.domain.rules import load_model
from tests.unit.journeys.test_engine import SETTINGS, T0, Harness

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


def test_journeys_and_scoring_count_the_same_events_as_engagement() -> None:
    """A lead's "last engaged" (scoring, on its profile) and the quiet time re-engagement waits for
    (journeys) are one notion: the same event types."""
    assert set(SETTINGS.engagement_events) == set(MODEL.engagement_events)


# The engagement the journeys' list lacked; each with what its own sequence needs.
LATE_ENGAGEMENT = [
    ("webinar_registered", {"webinar_id": "w-1", "starts_at": iso(T0 + timedelta(days=20))}),
    ("assessment_started", {"assessment": "eligibility"}),
    ("trial_started", {"ends_at": iso(T0 + timedelta(days=26))}),
    ("checkout_started", {"cart_id": "c-1", "plan": "family_plus"}),
]


@pytest.mark.parametrize(("etype", "props"), LATE_ENGAGEMENT, ids=[e for e, _ in LATE_ENGAGEMENT])
def test_a_lead_who_just_engaged_is_not_sent_the_check_in_for_14_quiet_days(etype: str,
                                                                             props: dict[str, str]) -> None:
    """Seed, Re-Engagement Nurturing Workflow: "No engagement for 14+ days after initial interaction". The
    `inactivity` event (what the family and entrepreneur re-engagement rules, and the trigger table's
    abandoned-assessment and initial-then-inactive rows, hear) came 14 days after a page view on day 0
    although the lead registered for a webinar (started an assessment, a trial, a checkout) on day 12,
    and its profile (scoring) said it engaged 2 days before."""
    h = Harness("family")
    h.lead["lifecycle_stage"] = "lead"
    h.message("lead_created")
    h.message("page_viewed", category="family")
    h.advance(days=12)
    h.message(etype, **props)
    assert h.state.inactive_due == T0 + timedelta(days=26)
    # The timer armed on day 0 no longer fires on day 14: nothing re-engages the lead then.
    stale = h.engine.inactivity_due(h.state, h.state.inactive_token - 1, T0 + timedelta(days=14))
    assert not stale.transitions and "re_engagement" not in h.state.enrollments
    # 14 quiet days after it, it does.
    h.now = T0 + timedelta(days=26)
    out = h.engine.inactivity_due(h.state, h.state.inactive_token, h.now)
    h.transitions += [t.summary for t in out.transitions]
    h.drive()
    assert "re_engagement" in h.state.enrollments


@pytest.mark.parametrize(("etype", "props"), LATE_ENGAGEMENT, ids=[e for e, _ in LATE_ENGAGEMENT])
def test_a_dormant_lead_who_engages_leaves_re_engagement(etype: str, props: dict[str, str]) -> None:
    """A lead in the re-engagement sequence who registers for a webinar or starts a trial is back: its
    check-ins stop (exit `reengaged`) instead of going on beside what it started."""
    h = Harness("family")
    h.lead["lifecycle_stage"] = "lead"
    h.message("lead_created")
    h.message("page_viewed", category="family")
    h.now = T0 + timedelta(days=14)
    out = h.engine.inactivity_due(h.state, h.state.inactive_token, h.now)
    h.transitions += [t.summary for t in out.transitions]
    h.drive()
    assert h.state.enrollments["re_engagement"].status == "active"
    h.advance(days=1)
    h.message(etype, **props)
    assert h.state.enrollments["re_engagement"].status == "completed", h.transitions[-5:]
    assert any("re_engagement" in t and "reengaged" in t for t in h.transitions), h.transitions[-5:]


@pytest.mark.parametrize("stage", ["customer", "sql", None])
@pytest.mark.parametrize("how", ["score_70", "interaction_burst", "high_engagement_signal"])
def test_the_high_engagement_sequence_is_for_prospects_not_customers(how: str, stage: str | None) -> None:
    """Seed, High-Engagement Nurturing Workflow: "accelerate the journey for highly engaged prospects". A
    customer reading a lot (two high-intent views: scoring's high_engagement signal) was entered and sent
    "Your subscription options (with a thank-you)", and sales were asked for personal outreach."""
    h = Harness()
    if stage is not None:
        h.lead["lifecycle_stage"] = stage
    h.message("lead_created")
    if how == "score_70":
        h.lead["score"] = 72
        h.message("score_changed", old=64, new=72)
    elif how == "interaction_burst":
        h.lead["counters"] = {"interactions_24h": 5}
        h.message("page_viewed", category="blog")
    else:
        msg = BusMessage(id="hi", lead_id=h.state.lead_id, type="page_viewed", properties={"category": "high_intent"},
                         lead=LeadSnapshot.from_dict(h.lead), occurred_at=iso(h.now), signals=("high_engagement",))
        h.engine.on_message(h.state, msg, h.now)
        h.drive()
    assert ("high_engagement" in h.state.enrollments) is (stage != "customer")
    h.advance(days=20)
    sent = [k for k in h.sent if ":high_engagement:" in k]
    assert bool(sent) is (stage != "customer"), sent


@pytest.mark.parametrize("stage", ["customer", "trial", None])
def test_trial_nurturing_is_for_prospects_not_customers(stage: str | None) -> None:
    """Seed, Trial Nurturing Workflow: "Trigger: free trial or assessment activation. Purpose: ... drive
    conversion to paid subscription". A customer starting an assessment got "How is your trial going?" and
    "Keep going: your trial-to-paid offer"."""
    h = Harness()
    if stage is not None:
        h.lead["lifecycle_stage"] = stage
    h.message("lead_created")
    h.message("assessment_started", assessment="eligibility")
    h.advance(days=14)
    sent = [k for k in h.sent if ":trial_nurture:" in k]
    assert ("trial_nurture" in h.state.enrollments) is (stage != "customer")
    assert bool([k for k in sent if ":email_07:" in k]) is (stage != "customer"), sent


def _handled_together(h: Harness, *events: tuple[str, dict[str, Any]]) -> None:
    """Messages the service handles one after another before it runs the steps they made due (a lead
    created and its trial started in the same second)."""
    for i, (etype, props) in enumerate(events):
        msg = BusMessage(id=f"t{i}", lead_id=h.state.lead_id, type=etype, properties=props,
                         lead=LeadSnapshot.from_dict(h.lead), occurred_at=iso(h.now))
        h.transitions += [t.summary for t in h.engine.on_message(h.state, msg, h.now).transitions]
    h.drive()


@pytest.mark.parametrize(("etype", "props"), [("assessment_started", {"assessment": "eligibility"}),
                                              ("trial_started", {"ends_at": iso(T0 + timedelta(days=14))})],
                         ids=["assessment", "trial"])
def test_a_segment_welcome_due_at_once_goes_before_trial_nurturing_pauses_the_segment_journey(
        etype: str, props: dict[str, str]) -> None:
    """Seed, segment workflows: "Immediate: Welcome email". A new lead whose assessment or trial started
    right after it was created had its segment journey paused by Trial Nurturing before the welcome ran,
    and got it 11 days later, when Trial Nurturing ended."""
    from services.journeys.domain.state import ACTIVE, PAUSED

    h = Harness()
    h.lead["lifecycle_stage"] = "lead"
    _handled_together(h, ("lead_created", {}), (etype, props))
    welcome = [at for k, at in h.sent_at if ":skilled_professional:1:email_01:" in k]
    assert welcome == [timedelta(0)], (h.sent, h.transitions)
    assert h.state.enrollments["trial_nurture"].status == ACTIVE
    segment = h.state.enrollments["skilled_professional"]
    assert segment.status == PAUSED and segment.pause_by is None
    assert any("paused while trial_nurture runs" in t for t in h.transitions), h.transitions
    h.advance(days=10)
    assert not [k for k in h.sent if ":skilled_professional:1:email_02:" in k], "paused while the trial runs"


def test_a_segment_journey_whose_welcome_went_is_paused_at_once() -> None:
    """The usual case is unchanged: nothing due, the pause is immediate and keeps the time left."""
    from services.journeys.domain.state import PAUSED

    h = Harness()
    h.lead["lifecycle_stage"] = "lead"
    h.message("lead_created")
    h.advance(hours=2)
    h.message("assessment_started", assessment="eligibility")
    segment = h.state.enrollments["skilled_professional"]
    assert segment.status == PAUSED and segment.paused_remaining == timedelta(hours=22).total_seconds()


@pytest.mark.parametrize("etype", ["page_viewed", "resource_downloaded", "video_watched"])
def test_bottom_funnel_content_the_model_scores_alerts_sales(etype: str) -> None:
    """Seed, Engagement Acceleration Triggers: "Engages with bottom-funnel content | +15 points | Alert sales
    team for outreach". The model scores a bottom-funnel page, download or video; the trigger row heard
    pages and downloads only, so a bottom-funnel video scored +15 and no sales task was made."""
    h = Harness()
    h.message("lead_created")
    rules, sent = _scored_and_published(h, etype, category="bottom_funnel")
    assert "bottom_funnel" in rules
    assert [k for k in sent if ":triggers:" in k and ":bottom_funnel:" in k], (etype, sent)


def test_a_video_of_another_category_alerts_no_one() -> None:
    h = Harness()
    h.message("lead_created")
    rules, sent = _scored_and_published(h, "video_watched", category="stories")
    assert "bottom_funnel" not in rules
    assert not [k for k in sent if ":bottom_funnel:" in k]


@pytest.mark.parametrize("stage", ["customer", "lead"])
def test_a_customer_completing_an_assessment_gets_the_results_not_the_sales_offer(stage: str) -> None:
    """Seed, Assessment Completion Sequence: results, explanation and insight, then "+10 Days: Invitation to
    discuss results in consultation" and "+14 Days: Subscription recommendation". Those two sell to a
    prospect; a customer (closed-won) who completes an assessment got the consultation invitation, sales
    got a task to offer it, and then the subscription it already has was recommended."""
    h = Harness()
    h.lead["lifecycle_stage"] = stage
    h.message("lead_created")
    h.message("assessment_completed", assessment="points", score=71)
    h.advance(days=20)
    steps = [k.split(":")[3] for k in h.sent if ":assessment:" in k]
    assert steps[:5] == ["email_01", "email_02", "email_03", "email_04", "email_05"], steps
    offer = [s for s in steps if s in ("email_06", "task_06", "email_07")]
    assert offer == ([] if stage == "customer" else ["email_06", "task_06", "email_07"]), steps
    assert h.state.enrollments["assessment"].status == "completed"
