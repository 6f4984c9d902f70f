"""The engine's decisions, driven in memory: explanations, arbitration, anchors, budget, determinism."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from nurture.busmessage import BusMessage, LeadSnapshot
from nurture.clock import VIRTUAL_EPOCH
from services.journeys.domain.definitions import check, load_playbook, read_settings
from services.journeys.domain.engine import Engine, _pauses
from services.journeys.domain.registry import Registry
from services.journeys.domain.state import ACTIVE, PAUSED, Effect, LeadState, Outcome, SendPayload, UpdatePayload, iso
from services.journeys.simulation import simulate

T0 = VIRTUAL_EPOCH
PLAYBOOK = load_playbook()
SETTINGS = read_settings()


class Harness:
    """One lead, the whole playbook, every effect answered `sent`."""

    def __init__(self, segment: str = "skilled_professional") -> None:
        self.registry = Registry()
        for j in PLAYBOOK.values():
            self.registry.add(j)
            self.registry.publish(j.key, j.version)
        self.engine = Engine(SETTINGS, self.registry.resolve, self.registry.published)
        self.lead: dict[str, Any] = {"id": "l-1", "segment": segment, "consent": {"email": True}, "score": 5,
                                     "attributes": {}, "counters": {}}
        self.state = LeadState("l-1")
        self.now = T0
        self.sent: list[str] = []
        self.sent_at: list[tuple[str, timedelta]] = []   # (dedupe key, time since T0)
        self.effects: list[Effect] = []
        self.transitions: list[str] = []

    def message(self, etype: str, **props: Any) -> Outcome:
        msg = BusMessage(id=f"m{len(self.transitions)}", lead_id=self.state.lead_id, type=etype, properties=props,
                         lead=LeadSnapshot.from_dict(self.lead), occurred_at=iso(self.now))
        out = self.engine.on_message(self.state, msg, self.now)
        self.transitions += [t.summary for t in out.transitions]
        self.drive()
        return out

    def drive(self) -> None:
        for ekey in sorted(self.state.enrollments):
            # Side steps again after the step run: an on_entry trigger checked at its end queues one.
            for side in (True, False, True):
                out = Outcome()
                while (effect := self.engine.next_effect(self.state, ekey, self.now, out, side=side)) is not None:
                    if isinstance(effect.payload, UpdatePayload):   # what scoring does with an update step
                        self.lead["attributes"].update(effect.payload.set)
                        # and the snapshot journeys holds follows (scoring's lead_updated, not modelled)
                        self.state.lead.setdefault("attributes", {}).update(effect.payload.set)
                    self.sent.append(effect.dedupe_key)
                    self.effects.append(effect)
                    self.sent_at.append((effect.dedupe_key, self.now - T0))
                    self.engine.complete(self.state, effect, self.now, out, status="sent")
                self.transitions += [t.summary for t in out.transitions]

    def advance(self, **delta: float) -> None:
        end = self.now + timedelta(**delta)
        while True:
            dues = [e.due for e in self.state.enrollments.values() if e.status == ACTIVE and e.due and e.due <= end]
            if not dues:
                break
            self.now = max(self.now, min(dues))
            self.drive()
        self.now = end


def test_urgent_timeline_jumps_to_decision_with_an_explanation() -> None:
    h = Harness()
    h.message("lead_created")
    assert h.sent[0].startswith("l-1:skilled_professional:1:email_01:1.1")
    h.advance(days=3)
    h.lead["attributes"] = {"timeline": "urgent"}
    h.message("form_submitted")
    # The profile's timeline and the form's are both read: each named by where it comes from.
    said = "jumped to decision stage: form_submitted attributes.timeline=urgent properties.timeline=None"
    assert any(said in t and "matched rule urgent_timeline" in t for t in h.transitions), h.transitions
    assert h.state.enrollments["skilled_professional"].stage == "decision"
    assert any(":skilled_professional:1:email_15:" in k for k in h.sent)


SEED_DAYS = (1, 2, 3, 5, 8, 11, 14, 17, 20, 25, 30, 35, 40, 45, 50, 55, 60)


def _dormant_family_lead() -> Harness:
    """A family lead who never opens: re-engagement starts at day 14 (Email 7 went on day 13)."""
    h = Harness("family")
    h.lead["lifecycle_stage"] = "lead"
    h.message("lead_created")
    h.advance(days=14)
    inactivity = h.engine.inactivity_due(h.state, h.state.inactive_token, T0 + timedelta(days=14))
    h.transitions += [t.summary for t in inactivity.transitions]
    h.drive()
    return h


def test_re_engagement_is_the_segment_journeys_branch_for_a_dormant_lead_which_then_resumes() -> None:
    # Seed: a segment workflow's "Re-engagement Sequence: for inactive leads, send specialized
    # re-engagement content" is one of its branches. The lead gets re-engagement's seven emails, not them
    # and the segment's on the same days (Email 11 once fell on re-engagement's sixth, and went 2 h late
    # behind messaging's gap); the segment sequence then picks up at Email 8 with the 2 days it had left.
    h = _dormant_family_lead()
    assert h.state.enrollments["re_engagement"].status == ACTIVE
    assert h.state.enrollments["family"].status == PAUSED
    assert any("paused while re_engagement runs" in t for t in h.transitions), h.transitions
    h.advance(days=80)
    family = [(k.split(":")[3], at) for k, at in h.sent_at if ":family:1:email_" in k]
    assert [step for step, _ in family] == [f"email_{i:02d}" for i in range(1, 18)]
    assert [at for _, at in family[:7]] == [timedelta(days=d - 1) for d in SEED_DAYS[:7]]
    reengage = [at for k, at in h.sent_at if ":re_engagement:1:email_" in k]
    assert reengage == [timedelta(days=14 + 3 * i) for i in range(7)]
    # Resumed when re-engagement ended (day 32), with the time Email 8 had left (Day 17: 2 days after 14).
    assert [at for _, at in family[7:]] == [timedelta(days=d - 1 + 18) for d in SEED_DAYS[7:]]
    days = [at.days for _, at in family] + [at.days for at in reengage]
    assert len(days) == len(set(days)), "one email a day from the two"


def test_a_dormant_lead_who_re_engages_goes_back_to_the_segment_journey_at_once() -> None:
    h = _dormant_family_lead()
    h.advance(days=1)
    h.message("email_opened", journey="re_engagement")
    assert h.state.enrollments["re_engagement"].status != ACTIVE
    assert h.state.enrollments["family"].status == ACTIVE
    h.advance(days=2)
    email_08 = [at for k, at in h.sent_at if ":family:1:email_08:" in k]
    assert email_08 == [timedelta(days=17)], "Email 8 went with the 2 days it had left when paused at day 14"


def test_customers_are_not_re_engaged() -> None:
    h = Harness("family")
    h.message("lead_created")
    h.lead["lifecycle_stage"] = "customer"
    h.message("subscribed")
    h.advance(days=14)
    h.engine.inactivity_due(h.state, h.state.inactive_token, T0 + timedelta(days=14))
    h.drive()
    assert "re_engagement" not in h.state.enrollments


def test_trial_pauses_the_segment_journey_and_resumes_it() -> None:
    h = Harness("family")
    h.message("lead_created")
    h.message("trial_started", ends_at=iso(T0 + timedelta(days=14)))
    assert h.state.enrollments["trial_nurture"].status == ACTIVE
    assert h.state.enrollments["family"].status == PAUSED
    h.advance(days=30)
    assert h.state.enrollments["trial_nurture"].status == "completed"
    assert h.state.enrollments["family"].status == ACTIVE


def test_a_trial_start_sends_one_welcome() -> None:
    # Trial Nurturing and Free Trial Onboarding both start on a trial and both open with a welcome:
    # the person gets onboarding's, and trial nurture goes on with its next step.
    h = Harness("family")
    h.message("lead_created")
    h.message("trial_started", ends_at=iso(T0 + timedelta(days=14)))
    welcomes = [k for k in h.sent if ":trial_nurture:1:email_01:" in k or ":trial_onboarding:1:email_01:" in k]
    assert welcomes == ["l-1:trial_onboarding:1:email_01:1.1"]
    assert any("branch branch_01 took wait_02" in t and "onboarding_welcomes" in t for t in h.transitions)
    h.advance(days=4)
    assert any(":trial_nurture:1:email_03:" in k for k in h.sent)
    # An assessment (no onboarding sequence) still gets trial nurture's own welcome.
    alone = Harness("family")
    alone.message("lead_created")
    alone.message("assessment_started")
    assert any(":trial_nurture:1:email_01:" in k for k in alone.sent)


def test_a_trial_gets_one_conversion_offer_a_day() -> None:
    # Seed: Trial Nurturing's step 7 (subscription options with a trial-to-paid incentive) and Free Trial
    # Onboarding's "-3 days to end" (ending reminder with a conversion offer) fell on the same day 11.
    h = Harness("family")
    h.message("lead_created")
    h.message("trial_started", ends_at=iso(T0 + timedelta(days=14)))
    h.advance(days=20)
    assert not any(":trial_nurture:1:email_07:" in k for k in h.sent)
    offers = [(k.split(":")[1], at) for k, at in h.sent_at
              if ":trial_onboarding:1:email_07:" in k or ":trial_onboarding:1:email_08:" in k]
    assert offers == [("trial_onboarding", timedelta(days=11)), ("trial_onboarding", timedelta(days=13))]
    assert h.state.enrollments["trial_nurture"].status == "completed"
    # Without the onboarding sequence (an assessment) trial nurture's own offer goes.
    alone = Harness("family")
    alone.message("lead_created")
    alone.message("assessment_started")
    alone.advance(days=20)
    assert any(":trial_nurture:1:email_07:" in k for k in alone.sent)


def test_a_trial_gets_one_email_a_day_from_trial_nurturing_and_trial_onboarding() -> None:
    # Seed: Trial Nurturing ("Trigger: free trial or assessment activation") and Free Trial Onboarding
    # ("Trigger: free trial activation") both run on a trial. Onboarding's +1 day tutorial and +7 days
    # mid-trial check-in fell on trial nurture's days 1 and 7 (first success, progress check): one a day.
    h = Harness("family")
    h.message("lead_created")
    h.message("trial_started", ends_at=iso(T0 + timedelta(days=14)))
    h.advance(days=20)
    trial = [(k.split(":")[1], k.split(":")[3], at) for k, at in h.sent_at
             if ":trial_nurture:1:email_" in k or ":trial_onboarding:1:email_" in k]
    days = [at.days for _, _, at in trial]
    assert len(days) == len(set(days)), trial
    nurture = [step for j, step, _ in trial if j == "trial_nurture"]
    assert nurture == ["email_03", "email_04", "email_06"], nurture
    assert any(":trial_nurture:1:task_05:" in k for k in h.sent), "the quiet trial user's task still goes"
    assert any("branch branch_02 took wait_03" in t and "onboarding_tutorial" in t for t in h.transitions)
    assert any("branch branch_05b took wait_06" in t and "onboarding_check_in" in t for t in h.transitions)
    # An assessment (no onboarding sequence) gets trial nurture's first success and progress check.
    alone = Harness("family")
    alone.message("lead_created")
    alone.message("assessment_started")
    alone.advance(days=20)
    steps = [k.split(":")[3] for k in alone.sent if ":trial_nurture:1:email_" in k]
    assert steps == ["email_01", "email_02", "email_03", "email_04", "email_05", "email_06", "email_07"], steps


def test_an_abandoned_assessment_gets_the_help_email_and_a_completed_one_does_not() -> None:
    # The seed's "Abandoned assessment or tool" trigger reads the profile; the canonical events mark it.
    for finished, expected in ((False, True), (True, False)):
        h = Harness()
        h.lead["lifecycle_stage"] = "lead"
        h.message("lead_created")
        h.message("assessment_started")
        assert h.lead["attributes"]["assessment_started"] is True
        if finished:
            h.message("assessment_completed")
        h.advance(days=14)
        inactivity = h.engine.inactivity_due(h.state, h.state.inactive_token, T0 + timedelta(days=14))
        h.transitions += [t.summary for t in inactivity.transitions]
        h.drive()
        h.advance(days=2)   # the frequency budget may hold it a day
        # The help is re-engagement's first email (one reach of a dormant lead, not one per pattern).
        assert any(":re_engagement:1:email_01_assessment:" in k for k in h.sent) is expected
        assert len([k for k in h.sent if ":re_engagement:1:email_01" in k]) == 1


def test_social_engagement_triggers_related_email_content() -> None:
    # The seed's Social Media + Email Integration, step 3; once a week at most.
    h = Harness()
    h.message("lead_created")
    h.advance(days=1)
    h.message("social_engaged", network="linkedin", post="data-report")
    h.message("social_engaged", network="linkedin", post="data-report")
    h.advance(days=2)
    assert len([k for k in h.sent if ":triggers:1:social_follow_up:" in k]) == 1


def test_an_unsubscribe_ends_the_journeys_of_the_mail_it_stops() -> None:
    # From trial reminders only: nurture goes on. From nurture: reminders go on. From all: both end.
    for scope, ended in (("transactional", {"trial_onboarding"}),
                         ("nurture", {"skilled_professional", "trial_nurture", "triggers"}),
                         ("all", {"skilled_professional", "trial_nurture", "triggers", "trial_onboarding"})):
        h = Harness()
        h.message("lead_created")
        h.message("trial_started", ends_at=iso(T0 + timedelta(days=14)))
        h.message("unsubscribed", scope=scope)
        live = {e.journey for e in h.state.enrollments.values() if e.status in (ACTIVE, PAUSED)}
        assert ended.isdisjoint(live) and ended | live >= {"skilled_professional", "trial_onboarding"}, (scope, live)


def test_a_resubscribe_resumes_what_a_nurture_unsubscribe_stopped_and_nothing_else_does() -> None:
    h = Harness()
    h.message("lead_created")
    h.advance(days=3)
    seg = h.state.enrollments["skilled_professional"]
    step_before, sent_before = seg.step, len(h.sent)
    h.message("unsubscribed", scope="nurture")
    assert seg.status not in (ACTIVE, PAUSED) and seg.outcome == "unsubscribed"
    # Consent never went off (the unsubscribe named nurture mail only): profile changes and score
    # changes do not bring the journey back while the unsubscribe stands.
    h.message("lead_updated", changed=["consent"])
    h.message("score_changed", old=5, new=40)
    assert seg.status not in (ACTIVE, PAUSED)
    # Messaging lifted the unsubscribe: the enrolment resumes where it stood, without repeating a step.
    h.message("email_resubscribed", scopes=["nurture"])
    assert seg.status == ACTIVE and seg.step == step_before
    assert any("re-entered after email consent was given again" in t for t in h.transitions)
    h.advance(days=10)
    resent = h.sent[sent_before:]
    assert resent and len(set(resent)) == len(resent) and not set(resent) & set(h.sent[:sent_before])


def test_a_resubscribe_of_another_scope_or_after_a_spam_report_resumes_nothing() -> None:
    h = Harness()
    h.message("lead_created")
    h.message("unsubscribed", scope="nurture")
    h.message("email_resubscribed", scopes=["transactional"])  # lifted another scope only
    assert h.state.enrollments["skilled_professional"].status not in (ACTIVE, PAUSED)
    h.message("email_resubscribed", scopes=["all"])
    assert h.state.enrollments["skilled_professional"].status == ACTIVE

    spam = Harness()
    spam.message("lead_created")
    spam.lead["consent"] = {"email": False}
    spam.message("spam_reported")
    spam.lead["consent"] = {"email": True}
    spam.message("lead_updated", changed=["consent"])   # consent alone does not undo a spam report
    spam.message("email_resubscribed", scopes=["all"])  # nor does a lift of unsubscribes
    assert spam.state.enrollments["skilled_professional"].outcome == "spam_reported"


def test_an_unsubscribed_lead_enters_no_other_journey_of_that_mail_until_it_resubscribes() -> None:
    """Found with `make run`: a lead who unsubscribed from nurture mail (consent itself stays on) and then
    went quiet was enrolled in re-engagement, and a checkout put it in cart abandonment: every email
    suppressed at send, yet counted as entered. Transactional journeys (a webinar's reminders) still enter."""
    h = Harness("family")
    h.message("lead_created")
    h.message("unsubscribed", scope="nurture")
    h.message("inactivity", days=14)
    h.message("checkout_started", cart_id="c-1", plan="family")
    h.message("webinar_registered", webinar_id="w-1", starts_at=iso(T0 + timedelta(days=3)))
    live = {e.journey for e in h.state.enrollments.values() if e.status in (ACTIVE, PAUSED)}
    assert live == {"webinar"}, live
    restored = LeadState.from_json(h.state.to_json(), list(h.state.enrollments.values()))
    assert restored.opted_out == {"nurture": "unsubscribed"}   # kept with the lead's state
    h.message("email_resubscribed", scopes=["nurture"])
    h.now += timedelta(days=1)
    h.message("checkout_started", cart_id="c-2", plan="family")
    assert h.state.enrollments["cart_abandonment"].status == ACTIVE
    assert h.state.opted_out == {}


def test_a_spam_report_keeps_new_journeys_closed_whatever_is_lifted() -> None:
    h = Harness()
    h.message("lead_created")
    h.message("spam_reported")
    h.message("unsubscribed", scope="nurture")          # does not soften the spam report
    h.message("email_resubscribed", scopes=["all"])
    h.message("checkout_started", cart_id="c-1", plan="pro")
    assert "cart_abandonment" not in h.state.enrollments
    assert h.state.opted_out == {"nurture": "spam_reported"}


def test_a_resubscribe_does_not_resume_a_journey_the_lead_no_longer_qualifies_for() -> None:
    h = Harness()
    h.message("lead_created")
    h.message("unsubscribed", scope="nurture")
    h.lead["segment"] = "family"   # left the segment while unsubscribed
    h.message("email_resubscribed", scopes=["nurture"])
    assert h.state.enrollments["skilled_professional"].status not in (ACTIVE, PAUSED)


def test_webinar_reschedule_moves_pending_reminders() -> None:
    h = Harness()
    starts = T0 + timedelta(days=5)
    h.message("webinar_registered", webinar_id="w1", starts_at=iso(starts))
    e = h.state.enrollments["webinar#w1"]
    assert e.due == starts - timedelta(days=1)
    h.message("webinar_rescheduled", webinar_id="w1", starts_at=iso(starts + timedelta(days=2)))
    assert e.due == starts + timedelta(days=1)
    h.advance(days=8)
    keys = [k for k in h.sent if ":webinar:" in k]
    assert [k.split(":")[3] for k in keys][:4] == ["email_01", "email_02", "email_03", "email_05"]


def test_an_extended_trial_moves_its_ending_emails_to_the_new_end() -> None:
    # Seed, Free Trial Onboarding: "-3 Days to End", "-1 Day to End", "+1 Day After End", relative to the
    # trial's end; trial_extended is the journey's reanchor event. A 7-day trial extended on day 3 to 14:
    # the reanchor was read only for journeys with an entity (a webinar), so the trial kept its old end
    # and the three ending emails went together with the +10d one, four days before the trial ended.
    h = Harness(segment="")
    h.message("trial_started", ends_at=iso(T0 + timedelta(days=7)))
    h.advance(days=3)
    h.message("trial_extended", ends_at=iso(T0 + timedelta(days=14)))
    assert h.state.enrollments["trial_onboarding"].anchors["ends_at"] == iso(T0 + timedelta(days=14))
    assert any(t.startswith("trial_onboarding: anchor moved (ends_at=") for t in h.transitions)
    h.advance(days=13)
    sent = {k.split(":")[3]: at for k, at in h.sent_at if ":trial_onboarding:" in k}
    assert {step: sent[step] for step in ("email_06", "email_07", "email_08", "email_09")} == {
        "email_06": timedelta(days=10), "email_07": timedelta(days=11), "email_08": timedelta(days=13),
        "email_09": timedelta(days=15)}


def _trial(days: int, extended: tuple[int, int] | None = None) -> tuple[Harness, dict[str, timedelta], list[str]]:
    """A trial of `days` (extended on day extended[0] to end on day extended[1]) run to its end: the
    onboarding emails sent (step -> time since the start) and its timeline."""
    h = Harness(segment="")
    h.message("trial_started", ends_at=iso(T0 + timedelta(days=days)))
    if extended is not None:
        h.advance(days=extended[0])
        h.message("trial_extended", ends_at=iso(T0 + timedelta(days=extended[1])))
    h.advance(days=40)
    assert h.state.enrollments["trial_onboarding"].status == "completed"
    sent = {k.split(":")[3]: at for k, at in h.sent_at if ":trial_onboarding:" in k}
    return h, sent, [t for t in h.transitions if t.startswith("trial_onboarding: ")]


def _days(sent: dict[str, timedelta]) -> dict[str, float]:
    return {step: at / timedelta(days=1) for step, at in sorted(sent.items())}


ENDING = {"email_07": -3, "email_08": -1, "email_09": 1}   # seed: -3 days, -1 day, +1 day after the end
FROM_START = {"email_01": 0, "email_02": 1, "email_03": 2, "email_04": 4, "email_05": 7, "email_06": 10}


@pytest.mark.parametrize("days", [7, 10, 14, 30])
def test_a_trial_of_any_length_gets_its_ending_emails_at_their_times_and_skips_what_would_come_after(
        days: int) -> None:
    # Seed, Free Trial Onboarding: +1d ... +10d from the start, then -3 days, -1 day and +1 day after the
    # end. A 7-day trial's +7d and +10d waits ran past the end, so "ends in 3 days" and "last day" went on
    # day 10 with "how was your trial?" (and a 10-day trial's on day 10 too). An email timed from the start
    # that would fall at or after the "-3 days" reminder is skipped, and the timeline says why. (14 and 30
    # days were right before and must stay so: a 30-day trial waits from day 10 to day 27.)
    h, sent, timeline = _trial(days)
    reminder = days - 3
    kept = {step: d for step, d in FROM_START.items() if d < reminder or step == "email_01"}
    assert _days(sent) == {**kept, **{step: days + d for step, d in ENDING.items()}}
    skipped = sorted(set(FROM_START) - set(kept))
    for step in skipped:
        assert (f"trial_onboarding: {step} skipped: at or after its skip_from ends_at -3d "
                f"({iso(T0 + timedelta(days=reminder))})") in timeline, timeline
    capped = [t for t in timeline if "ends at its not_after" in t]
    assert [t.split(":")[1].split()[0] for t in capped] == [s.replace("email", "wait") for s in skipped
                                                             if FROM_START[s] > reminder]
    if capped:
        assert capped[-1] == (f"trial_onboarding: wait_06 ends at its not_after ends_at -3d "
                              f"({iso(T0 + timedelta(days=reminder))}), before its own time entered_at +10d "
                              f"({iso(T0 + timedelta(days=10))})")
    # Seven days: +1d, +2d, the reminder on day 4, the last day on day 6, the follow-up on day 8.
    assert days != 7 or list(_days(sent).values()) == [0, 1, 2, 4, 6, 8]


@pytest.mark.parametrize("days", [1, 2, 3, 4])
def test_a_trial_of_three_days_or_less_gets_no_ends_in_3_days_email_with_its_welcome(days: int) -> None:
    # A trial of 3 days or less has its "-3 days to end" moment at or before its start: "Your trial ends
    # in 3 days" went right after the welcome (every email timed from the start skipped before it). Its
    # first wait is already past at the start and goes to the last-day email (if_past): the welcome, the
    # last day's incentive (a 1-day trial's last day is its first) and the follow-up. 4 days keeps it all.
    _, sent, timeline = _trial(days)
    if days <= 3:
        assert _days(sent) == {"email_01": 0, "email_08": days - 1, "email_09": days + 1}
        assert (f"trial_onboarding: wait_02 already past ({iso(T0 + timedelta(days=days - 3))}): going to wait_08"
                in timeline), timeline
    else:
        assert _days(sent) == {"email_01": 0, "email_07": 1, "email_08": 3, "email_09": 5}
    # A 3-day trial extended on day 1 to 14 days: the last day and the follow-up move to the new end; what
    # the short trial had passed by (the emails timed from the start, the reminder) is not sent late.
    if days == 3:
        _, sent, _ = _trial(days, extended=(1, 14))
        assert _days(sent) == {"email_01": 0, "email_08": 13, "email_09": 15}


def test_an_extended_trial_gets_the_schedule_of_its_new_length() -> None:
    # Extended before its reminder (day 3 of 7, to 14): the whole 14-day schedule, nothing skipped.
    _, sent, timeline = _trial(7, extended=(3, 14))
    assert _days(sent) == {**FROM_START, **{step: 14 + d for step, d in ENDING.items()}}
    assert not any("skipped" in t for t in timeline), timeline
    # Extended after its reminder went (day 5 of 7, to 14): the reminder stands, the last day and the
    # follow-up move to the new end; the +4d, +7d and +10d emails were skipped for the old end and stay so
    # (before, the +7d and +10d waits went on past the end, and the reminder went on day 11).
    _, sent, timeline = _trial(7, extended=(5, 14))
    assert _days(sent) == {"email_01": 0, "email_02": 1, "email_03": 2, "email_07": 4, "email_08": 13,
                           "email_09": 15}
    assert any(t.startswith("trial_onboarding: anchor moved (ends_at=") and iso(T0 + timedelta(days=13)) in t
               for t in timeline), timeline


def test_budget_holds_nurture_but_not_transactional() -> None:
    h = Harness()
    h.message("lead_created")  # segment email_01 + nothing else
    h.message("page_viewed", category="pricing")  # triggers.pricing_page (side send, nurture)
    h.message("page_viewed", category="country")  # segment country_pathways + triggers.country_content
    h.message("webinar_registered", webinar_id="w2", starts_at=iso(T0 + timedelta(days=3)))
    # Budget 2 nurture a day: the welcome and the pricing trigger go; both country emails are held until
    # exactly a day after the first send; the transactional webinar confirmation is never held.
    assert h.sent == ["l-1:skilled_professional:1:email_01:1.1", "l-1:triggers:1:pricing_page:1.1",
                      "l-1:webinar:1:email_01:w2@1.1"]
    assert h.state.sends == [iso(T0), iso(T0)]
    held = [t for t in h.transitions if "held by the frequency budget" in t]
    until = iso(T0 + timedelta(days=1))
    assert held == [f"skilled_professional: country_pathways held by the frequency budget until {until}",
                    f"triggers: country_content held by the frequency budget until {until}"]
    assert {k: (e.side, e.side_at) for k, e in h.state.enrollments.items() if e.side} == {
        "skilled_professional": (["country_pathways"], T0 + timedelta(days=1)),
        "triggers": (["country_content"], T0 + timedelta(days=1))}


def test_simulation_is_deterministic_for_a_seed() -> None:
    a = simulate(leads=60, days=20, seed=3)
    b = simulate(leads=60, days=20, seed=3)
    c = simulate(leads=60, days=20, seed=4)
    a["engine"].pop("wall_seconds")
    b["engine"].pop("wall_seconds")
    c["engine"].pop("wall_seconds")
    assert a == b
    assert a != c
    assert a["totals"]["sent"] > 0 and a["journeys"]["skilled_professional"]["enrolled"] == 20


def test_date_relative_entry_fires_at_the_lead_date_minus_offset() -> None:
    from services.journeys.domain.definitions import load

    h = Harness()
    doc = {"key": "visa_renewal", "name": "Visa renewal", "kind": "sequence", "priority": 40,
           "entry": [{"name": "expiry_30d", "date": {"fact": "lead.attributes.visa_expires_at", "offset": "-30d"}}],
           "steps": [{"id": "email_01", "type": "send"}, {"id": "done", "type": "end"}]}
    journey = load(doc, version=1)
    h.registry.add(journey)
    h.registry.publish("visa_renewal", 1)
    expiry = T0 + timedelta(days=40)
    h.lead["attributes"] = {"visa_expires_at": iso(expiry)}
    out = h.message("lead_updated")
    assert out.dates_changed == {"visa_renewal.expiry_30d"}
    token = h.state.dates["visa_renewal.expiry_30d"]["token"]
    assert not h.engine.date_due(h.state, "visa_renewal.expiry_30d", token, T0 + timedelta(days=9)).transitions
    fired = h.engine.date_due(h.state, "visa_renewal.expiry_30d", token, T0 + timedelta(days=10))
    assert any("matched rule expiry_30d" in t.summary for t in fired.transitions)
    assert h.state.enrollments["visa_renewal"].status == ACTIVE


def test_unsubscribe_ends_nurture_journeys_but_not_transactional_ones() -> None:
    h = Harness()
    h.message("lead_created")
    h.message("webinar_registered", webinar_id="w3", starts_at=iso(T0 + timedelta(days=2)))
    h.lead["consent"] = {"email": False}
    h.message("unsubscribed")
    statuses = {k: e.status for k, e in h.state.enrollments.items()}
    assert statuses["skilled_professional"] == "exited" and statuses["triggers"] == "exited"
    assert statuses["webinar#w3"] == ACTIVE
    assert h.state.enrollments["skilled_professional"].outcome == "unsubscribed"


def test_ab_split_is_stable_per_lead_and_follows_weights() -> None:
    from collections import Counter

    from services.journeys.domain.definitions import load

    doc = {"key": "offer_test", "name": "Offer A/B", "kind": "sequence",
           "entry": [{"name": "checkout", "events": ["checkout_started"]}],
           "steps": [{"id": "ab", "type": "split", "variants": [{"name": "discount", "weight": 3, "next": "email_01"},
                                                                 {"name": "consult", "weight": 1, "next": "email_02"}]},
                     {"id": "email_01", "type": "send", "next": "done"},
                     {"id": "email_02", "type": "send", "next": "done"},
                     {"id": "done", "type": "end"}]}
    journey = load(doc, version=1)
    chosen: Counter[str] = Counter()
    for n in range(200):
        h = Harness()
        h.registry.add(journey)
        h.registry.publish("offer_test", 1)
        h.state.lead_id = f"ab-{n}"
        h.message("checkout_started")
        steps = [k.split(":")[3] for k in h.sent if ":offer_test:" in k]
        assert len(steps) == 1
        chosen[steps[0]] += 1
        assert any("split ab assigned variant" in t for t in h.transitions)
    assert 0.62 < chosen["email_01"] / 200 < 0.88


def test_pausing_by_kind_leaves_the_always_on_trigger_tables_alone() -> None:
    # The trigger tables are kind `sequence` (API.md) but mode always_on: a journey that pauses
    # sequences pauses step flows, not the rule tables; naming the mode (or legacy kind) still does.
    triggers, webinar = PLAYBOOK["triggers"], PLAYBOOK["webinar"]
    assert _pauses(replace(webinar, pauses=("sequence",)), PLAYBOOK["cart_abandonment"])
    assert not _pauses(replace(webinar, pauses=("sequence",)), triggers)
    assert _pauses(replace(webinar, pauses=("always_on",)), triggers)
    assert _pauses(replace(webinar, pauses=("triggers",)), triggers)


@pytest.mark.parametrize(("attended_at", "expected"), [
    # A no-show's +3d outreach is its own (email_07 thanks the lead for coming).
    (None, ["email_01", "email_02", "email_03", "email_05", "email_07_no_show", "email_08"]),
    (timedelta(minutes=30), ["email_01", "email_02", "email_03", "email_04", "email_06", "email_07", "email_08"]),
    # Reported after the +1h no-show decision: attended after all, the attended path from here.
    (timedelta(hours=1, minutes=30),
     ["email_01", "email_02", "email_03", "email_05", "email_04", "email_06", "email_07", "email_08"]),
    (timedelta(days=2), ["email_01", "email_02", "email_03", "email_05", "email_04", "email_07", "email_08"]),
    # Before the attendance wait (the platform reported early): no more reminders, the thank-you at +1h.
    (timedelta(hours=-3), ["email_01", "email_02", "email_04", "email_06", "email_07", "email_08"]),
])
def test_recorded_webinar_attendance_counts_whenever_it_arrives(attended_at: timedelta | None,
                                                                expected: list[str]) -> None:
    h = Harness()
    h.message("lead_created")
    starts = T0 + timedelta(days=3)
    h.message("webinar_registered", webinar_id="w-1", starts_at=iso(starts))
    if attended_at is not None:
        h.advance(seconds=(starts + attended_at - h.now).total_seconds())
        h.message("webinar_attended", webinar_id="w-1")
    h.advance(seconds=(starts + timedelta(days=8) - h.now).total_seconds())
    steps = [k.split(":")[3] for k in h.sent if ":webinar:1:" in k]
    assert steps == expected, h.transitions
    if attended_at and attended_at > timedelta(hours=1):
        assert any("matched rule attended_late" in t for t in h.transitions)


def test_high_engagement_counts_emails_opened_or_clicked_not_interactions() -> None:
    # Seed: "If opening/clicking 3+ emails, accelerate". Opening and clicking one email, or opening
    # it again, is one email engaged with; the third distinct email fires the trigger.
    h = Harness()
    h.message("lead_created")
    for etype, message in (("email_opened", "m1"), ("email_clicked", "m1"), ("email_opened", "m1"),
                           ("email_opened", "m2"), ("email_clicked", "m2")):
        h.message(etype, journey="skilled_professional", step="email_01", message_id=message)
    e = h.state.enrollments["skilled_professional"]
    assert e.engaged == 2 and e.pace == 1.0
    assert not any("matched rule high_engagement" in t for t in h.transitions)
    h.message("email_opened", journey="skilled_professional", step="email_03", message_id="m3")
    assert e.engaged == 3 and e.pace == 0.5
    assert any("matched rule high_engagement" in t for t in h.transitions)


@pytest.mark.parametrize(("etype", "props", "template", "shown"), [
    ("webinar_registered", {"webinar_id": "w-1", "starts_at": iso(T0 + timedelta(days=3)),
                            "webinar_title": "Canada 101", "join_url": "https://zoom.example/j/1"},
     "webinar.email_01", {"webinar_title": "Canada 101", "join_url": "https://zoom.example/j/1", "webinar_id": "w-1"}),
    ("resource_downloaded", {"resource": "g-1", "resource_title": "Global Skills Demand Report",
                             "resource_url": "https://cdn.example/g-1.pdf"},
     "lead_magnet.email_01", {"resource": "g-1", "resource_title": "Global Skills Demand Report",
                              "resource_url": "https://cdn.example/g-1.pdf"}),
    ("trial_started", {"ends_at": iso(T0 + timedelta(days=14)), "plan": "Family Plus"},
     "trial_onboarding.email_01", {"plan": "Family Plus"}),
    ("assessment_completed", {"assessment": "points", "score": 71}, "assessment.email_01", {"assessment_score": "71"}),
    ("checkout_started", {"cart_id": "c-1", "plan": "Pro"}, "cart_abandonment.email_01", {"plan": "Pro"}),
])
def test_sequence_emails_get_the_event_values_their_templates_show(etype: str, props: dict[str, Any],
                                                                   template: str, shown: dict[str, str]) -> None:
    # The messaging templates print ctx.webinar_title, ctx.resource_title, ctx.assessment_score and
    # ctx.plan, and link to the resource's, webinar's and plan's own pages (ctx.resource_url,
    # ctx.resource, ctx.webinar_id, ctx.plan); a send's context is its enrolment's anchors, kept from
    # the triggering event.
    h = Harness()
    h.message("lead_created")
    h.message(etype, **props)
    journey = template.split(".")[0]
    e = next(x for x in h.state.enrollments.values() if x.journey == journey)
    assert {k: e.anchors.get(k) for k in shown} == shown
    h.advance(hours=2)  # the cart reminder goes at +1h
    assert any(f":{journey}:1:{template.split('.')[1]}:" in k for k in h.sent)


def test_a_lead_who_consents_later_gets_the_behavioral_triggers() -> None:
    # Created without email consent, consenting a minute later: the trigger tables listen from then
    # on (they used to be entered and exited at once for no consent, and `reentry: never` kept them off).
    h = Harness()
    h.lead["consent"] = {"email": False}
    h.message("lead_created")
    h.message("page_viewed", category="country")
    assert "triggers" not in h.state.enrollments
    h.lead["consent"] = {"email": True}
    h.message("lead_updated")
    h.message("page_viewed", category="pricing")
    assert h.state.enrollments["triggers"].status == ACTIVE
    h.drive()
    assert any(":triggers:1:pricing_page:" in k for k in h.sent), h.sent


def test_a_reminder_that_comes_to_run_later_than_its_skip_if_late_is_skipped_with_the_reason() -> None:
    # E.g. messaging or the service down past the no-show message's moment: the late "We missed you"
    # is dropped and explained, and the follow-ups keep their own times.
    h = Harness()
    h.message("lead_created")
    h.message("webinar_registered", webinar_id="w7", starts_at=iso(T0 + timedelta(days=2)))
    h.advance(days=2, minutes=59)
    h.now = T0 + timedelta(days=4, hours=1)   # nothing ran in between
    h.drive()
    assert not any(":webinar:1:email_05:" in k for k in h.sent)
    assert any("webinar: email_05 skipped: its time" in t and "passed 2.0 d ago, more than its skip_if_late 1d" in t
               for t in h.transitions), h.transitions
    assert h.state.enrollments["webinar#w7"].due == T0 + timedelta(days=5)


def test_skip_options_are_validated() -> None:
    from services.journeys.domain.definitions import DefinitionError, load

    doc = {"key": "x", "kind": "sequence", "steps": [
        {"id": "a", "type": "send", "skip_if_late": "soon"},
        {"id": "b", "type": "send", "skip_after": {"anchor": "nope"}},
        {"id": "w", "type": "wait", "delay": "1d", "skip_if_late": "1d"},
        {"id": "c", "type": "send", "skip_after": {"delay": "1d"}, "skip_from": {"delay": "1d"}},
        {"id": "d", "type": "send", "skip_from": {"anchor": "nope"}},
        {"id": "v", "type": "wait", "delay": "1d", "not_after": {"anchor": "entered_at", "offset": "1d"},
         "skip_from": {"delay": "1d"}},
        {"id": "u", "type": "wait", "until": {"anchor": "entered_at", "offset": "2d"}, "not_after": {"anchor": "nope"}},
        {"id": "t", "type": "send", "not_after": {"delay": "1d"}},
        {"id": "e", "type": "end"}]}
    with pytest.raises(DefinitionError) as err:
        load(doc)
    both = "step c: one of skip_after (after that time) or skip_from (from that time on), not both"
    assert both in err.value.problems
    assert "step d.skip_from: unknown anchor 'nope' (declare it under anchors)" in err.value.problems
    assert "step v: skip_from applies to send, task, webhook and update steps" in err.value.problems
    for sid in ("v", "t"):
        assert (f"step {sid}: not_after applies to until waits (the wait ends at the earlier of the two)"
                in err.value.problems)
    assert "step u.not_after: unknown anchor 'nope' (declare it under anchors)" in err.value.problems
    assert "step a.skip_if_late: bad duration 'soon' (expected e.g. 2d, -2h, 30m)" in err.value.problems
    assert "step b.skip_after: unknown anchor 'nope' (declare it under anchors)" in err.value.problems
    assert "step w: skip_if_late applies to send, task, webhook and update steps" in err.value.problems


def test_subscribing_to_email_again_is_consent_not_a_conversion() -> None:
    # `subscribed` with a channel is a subscription to that mail (consent); without one it is the
    # purchase that ends the nurture journeys as converted.
    h = Harness("family")
    h.message("lead_created")
    assert h.state.enrollments["family"].status == ACTIVE
    h.message("subscribed", channel="email")
    assert h.state.enrollments["family"].status == ACTIVE
    h.message("subscribed")
    assert h.state.enrollments["family"].status != ACTIVE
    assert h.state.enrollments["family"].outcome == "converted"


def test_a_newsletter_signup_during_checkout_is_not_the_purchase_the_cart_waits_for() -> None:
    # The wait's event condition (event.when): a channel subscription leaves the cart reminder due.
    h = Harness()
    h.message("checkout_started", cart_id="c-9", plan="Pro")
    h.message("subscribed", channel="email")
    h.advance(hours=2)
    assert any(":cart_abandonment:" in k and ":email_01:" in k for k in h.sent), h.sent
    bought = Harness()
    bought.message("checkout_started", cart_id="c-9", plan="Pro")
    bought.message("subscribed", plan="Pro")
    bought.advance(hours=2)
    assert not any(":cart_abandonment:" in k and ":email_01:" in k for k in bought.sent), bought.sent


def test_a_wait_event_condition_is_validated() -> None:
    cart = PLAYBOOK["cart_abandonment"].document
    steps = [{**s, "event": {**s["event"], "when": {"fact": "event.properties.channel"}}}
             if s.get("type") == "wait" and s.get("event") else s for s in cart["steps"]]
    _, problems = check({**cart, "steps": steps})
    assert any(".event.when." in p for p in problems), problems


def test_a_late_registrant_still_gets_the_access_link_before_the_start() -> None:
    # Registered an hour before the start: the 2-hours-before moment has passed, but the final
    # reminder (the one carrying the access link) still goes, at once; the day-before one does not.
    h = Harness()
    h.message("webinar_registered", webinar_id="w-late", starts_at=iso(h.now + timedelta(hours=1)),
              join_url="https://meet.example.com/w-late")
    webinar = [k for k in h.sent if ":webinar:" in k]
    assert any(":email_01:" in k for k in webinar) and any(":email_03:" in k for k in webinar), webinar
    assert not any(":email_02:" in k for k in webinar), webinar


@pytest.mark.parametrize(("new", "enrolled"), [(69, False), (70, True), (71, True)])
def test_high_engagement_entry_at_a_score_of_exactly_70(new: int, enrolled: bool) -> None:
    h = Harness()
    h.message("lead_created")
    h.lead["score"] = new
    h.message("score_changed", old=new - 8, new=new)
    assert ("high_engagement" in h.state.enrollments) is enrolled
    if enrolled:
        assert any("matched rule score_70" in t for t in h.transitions), h.transitions
        assert any(":high_engagement:1:email_01:" in k for k in h.sent)


@pytest.mark.parametrize(("interactions", "enrolled"), [(4, False), (5, True)])
def test_high_engagement_entry_at_five_interactions_a_day(interactions: int, enrolled: bool) -> None:
    h = Harness()
    h.message("lead_created")
    h.lead["counters"] = {"interactions_24h": interactions}
    h.message("page_viewed", category="blog")
    assert ("high_engagement" in h.state.enrollments) is enrolled


def test_webinar_reminders_go_exactly_a_day_and_two_hours_before_the_start() -> None:
    h = Harness()
    h.message("lead_created")
    starts = T0 + timedelta(days=5, hours=8)
    h.message("webinar_registered", webinar_id="w-t", starts_at=iso(starts))
    h.advance(days=6)
    at = {k.split(":")[3]: when for k, when in h.sent_at if ":webinar:1:" in k}
    assert at["email_01"] == timedelta(0)
    assert at["email_02"] == starts - timedelta(days=1) - T0
    assert at["email_03"] == starts - timedelta(hours=2) - T0
    # Nothing of the webinar went in between (the times are the wait's, not a poll's).
    assert [k.split(":")[3] for k, when in h.sent_at if ":webinar:1:" in k and when < starts - T0] == [
        "email_01", "email_02", "email_03"]


def test_an_engagement_before_day_14_moves_the_re_engagement_date() -> None:
    # Inactivity counts from the latest engagement: an open on day 10 moves re-engagement to day 24.
    h = Harness("family")
    h.message("lead_created")
    assert h.state.inactive_due == T0 + timedelta(days=14)
    h.advance(days=10)
    h.message("email_opened", journey="family", step="email_05", message_id="m-10")
    assert h.state.inactive_due == T0 + timedelta(days=24)
    token = h.state.inactive_token
    # The old day-14 moment (and any token from before the open) enters nobody.
    h.advance(days=4)
    assert not h.engine.inactivity_due(h.state, token - 1, T0 + timedelta(days=14)).transitions
    assert not h.engine.inactivity_due(h.state, token, T0 + timedelta(days=14)).transitions
    h.advance(days=10, seconds=-1)
    assert not h.engine.inactivity_due(h.state, token, T0 + timedelta(days=24, seconds=-1)).transitions
    assert "re_engagement" not in h.state.enrollments
    h.advance(seconds=1)
    fired = h.engine.inactivity_due(h.state, token, T0 + timedelta(days=24))
    assert fired.transitions
    h.drive()
    assert h.state.enrollments["re_engagement"].status == ACTIVE
    assert h.state.enrollments["re_engagement"].entered_at == T0 + timedelta(days=24)


def _sends(h: Harness, template: str) -> list[dict[str, Any]]:
    return [dict(e.payload.context) for e in h.effects
            if isinstance(e.payload, SendPayload) and e.payload.template == template]


def test_a_download_after_the_sequence_ended_starts_it_again_where_tool_use_waits_30_days() -> None:
    # The lead-magnet sequence ends on day 14. A download on day 20 starts it again for the new
    # resource (its entry rule re-enters always, explained); tool use re-enters only 30 days after an end.
    h = Harness()
    h.message("lead_created")
    h.message("resource_downloaded", resource="g-1", resource_title="Global Skills Demand Report")
    h.advance(days=16)
    assert h.state.enrollments["lead_magnet"].status != ACTIVE
    h.message("page_viewed", category="tool")
    assert h.state.enrollments["lead_magnet"].status != ACTIVE
    h.advance(days=4)
    h.message("resource_downloaded", resource="g-2", resource_title="Family Sponsorship Guide")
    assert [d["resource"] for d in _sends(h, "lead_magnet.email_01")] == ["g-1", "g-2"]
    assert h.state.enrollments["lead_magnet"].entry == 2
    assert any("matched rule downloaded (re-entry by the rule's own always; the journey's after 30d refused it)"
               in t for t in h.transitions), h.transitions
    h.advance(days=16)
    assert [d["resource"] for d in _sends(h, "lead_magnet.email_07")] == ["g-1", "g-2"]
    h.message("page_viewed", category="tool")   # 2 days after the second end: the journey's 30 days hold
    assert h.state.enrollments["lead_magnet"].entry == 2
    h.advance(days=29)
    h.message("page_viewed", category="tool")
    assert h.state.enrollments["lead_magnet"].entry == 3 and h.state.enrollments["lead_magnet"].status == ACTIVE


def test_every_download_is_delivered_and_the_follow_ups_speak_of_the_latest() -> None:
    # The seed's "Immediate: deliver lead magnet": a second and a third resource downloaded while the
    # sequence runs (a live enrolment is not entered again) are delivered too, each once,
    # and the follow-ups still to come name the latest.
    h = Harness()
    h.message("lead_created")
    h.message("resource_downloaded", resource="g-1", resource_title="Global Skills Demand Report")
    h.advance(hours=3)
    h.message("resource_downloaded", resource="g-2", resource_title="Family Sponsorship Guide")
    h.message("resource_downloaded", resource="g-3", resource_title="Investor Visa Checklist")
    assert [(d["resource"], d["resource_title"]) for d in _sends(h, "lead_magnet.email_01")] == [
        ("g-1", "Global Skills Demand Report"), ("g-2", "Family Sponsorship Guide"),
        ("g-3", "Investor Visa Checklist")]
    assert any("anchors taken from the event (" in t and "resource=g-2" in t and "matched rule another_download" in t
               for t in h.transitions), h.transitions
    h.advance(days=2)
    assert [d["resource"] for d in _sends(h, "lead_magnet.email_02")] == ["g-3"]
    assert len([e for e in h.effects if e.step == "email_01" and e.ekey == "lead_magnet"]) == 1


@pytest.mark.parametrize("how", ["form_answer", "profile"])
def test_extended_family_interest_sends_the_reunification_guide_once(how: str) -> None:
    # The seed's family branch "Extended Family Interest: if indicating extended family immigration
    # interest, send family reunification guides". A website form says so in its answers (the event's
    # properties: forms do not write the profile), as the urgent-timeline form does; a profile update
    # (PATCH attributes) says so too. A new user's form answer `extended_family: true` got nothing.
    h = Harness("family")
    h.message("lead_created")
    h.advance(hours=3)
    if how == "form_answer":
        h.message("form_submitted", form="family_profile", extended_family=True)
    else:
        h.lead["attributes"] = {"extended_family": True}
        h.message("lead_updated")
    h.advance(days=1)
    guides = [k for k in h.sent if ":family:1:reunification_guide:" in k]
    assert len(guides) == 1, h.transitions
    assert any("matched rule extended_family" in t for t in h.transitions), h.transitions
    h.message("form_submitted", form="family_profile", extended_family=True)   # said again: not sent again
    h.advance(days=1)
    assert len([k for k in h.sent if ":family:1:reunification_guide:" in k]) == 1


def test_a_form_without_extended_family_interest_sends_no_reunification_guide() -> None:
    h = Harness("family")
    h.message("lead_created")
    h.message("form_submitted", form="family_profile", extended_family=False, children=2)
    h.advance(days=1)
    assert not [k for k in h.sent if ":family:1:reunification_guide:" in k]


@pytest.mark.parametrize("segment,source", [("family", "website_form"), ("entrepreneur", "api")])
def test_an_urgent_timeline_in_the_profile_gets_the_expedited_pathways_email_once(segment: str, source: str) -> None:
    # The seed's Interest-Based Content Triggers: "Timeline/urgency indicators: provide expedited pathway
    # information". The website's progressive form (profiling.yaml, "When do you plan to move?") and the
    # API write the answer to the profile (attributes.timeline), not into an event: a family lead whose
    # form said urgent, or an entrepreneur whose profile was updated so, got no such email.
    h = Harness(segment)
    h.message("lead_created")
    h.advance(days=2)
    h.lead["attributes"] = {"timeline": "urgent"}
    h.message("lead_updated", changed=["attributes"], source=source)
    h.advance(days=2)
    assert len([k for k in h.sent if ":triggers:1:timeline_urgency:" in k]) == 1, h.transitions
    assert any("matched rule urgent_timeline_profile" in t for t in h.transitions), h.transitions
    h.lead["attributes"] = {"timeline": "urgent", "sales_owner": "ana.costa@borderbridge.example"}
    h.advance(days=20)
    h.message("lead_updated", changed=["attributes"], source="crm")   # any later profile change: not again
    h.advance(days=2)
    assert len([k for k in h.sent if ":triggers:1:timeline_urgency:" in k]) == 1, h.transitions


def test_a_profile_without_an_urgent_timeline_gets_no_expedited_pathways_email() -> None:
    h = Harness("family")
    h.message("lead_created")
    h.lead["attributes"] = {"timeline": "within_12_months"}
    h.message("lead_updated", changed=["attributes"], source="website_form")
    h.advance(days=2)
    assert not [k for k in h.sent if ":triggers:1:timeline_urgency:" in k]


@pytest.mark.parametrize("props", [{"type": "hard"}, {"bounce_type": "hard"}])
def test_a_posted_hard_bounce_ends_the_mail_journeys_as_our_own_does(props: dict[str, str]) -> None:
    # A caller's `email_bounced` marked hard (POST /v1/events: another sender's webhook) suppresses the
    # address in messaging; the lead stayed in its journeys, each later email suppressed, the journey
    # "active" for ever. Now it ends them as messaging's own `email_hard_bounced` does, and consent alone
    # does not bring them back.
    h = Harness()
    h.message("lead_created")
    h.advance(days=2)
    h.message("email_bounced", **props)
    for key in ("skilled_professional", "triggers"):
        assert h.state.enrollments[key].status not in (ACTIVE, PAUSED)
        assert h.state.enrollments[key].outcome == "email_hard_bounced"
    h.lead["consent"] = {"email": True}
    h.message("lead_updated", changed=["consent"])
    assert h.state.enrollments["skilled_professional"].outcome == "email_hard_bounced"

    soft = Harness()
    soft.message("lead_created")
    soft.message("email_bounced", type="soft")
    assert soft.state.enrollments["skilled_professional"].status == ACTIVE


def test_two_webinars_of_one_lead_have_their_own_dedupe_keys() -> None:
    # A lead registered for two webinars: each has entry 1 of its own instance, and the keys named only
    # the entry, so the second's confirmation and reminders were the first's keys (messaging: duplicate).
    h = Harness()
    h.message("lead_created")
    h.message("webinar_registered", webinar_id="wA", starts_at=iso(T0 + timedelta(days=5)))
    h.message("webinar_registered", webinar_id="wB", starts_at=iso(T0 + timedelta(days=9)))
    h.message("webinar_registered", webinar_id="x" * 300, starts_at=iso(T0 + timedelta(days=7)))
    firsts = [k for k in h.sent if ":webinar:1:email_01:" in k]
    assert firsts[:2] == ["l-1:webinar:1:email_01:wA@1.1", "l-1:webinar:1:email_01:wB@1.1"], h.sent
    assert len(set(firsts)) == 3 and all(len(k) < 200 and k.count(":") == 4 for k in firsts), firsts
    h.advance(days=10)
    reminders = [k for k in h.sent if ":webinar:1:email_02:" in k]   # the day-before reminder of each
    assert len(set(reminders)) == 3, reminders


# Trial Nurturing's emails beside Free Trial Onboarding's (which takes the welcome, day 1, day 7 and the
# conversion offer of a trial it runs for: the branches above), by day.
@pytest.mark.parametrize(("days", "nurture_days"), [
    (7, {"email_03": 3, "email_04": 5}),
    (10, {"email_03": 3, "email_04": 5, "email_06": 9}),
    (14, {"email_03": 3, "email_04": 5, "email_06": 9}),
])
def test_trial_nurturing_sends_nothing_of_its_conversion_stage_after_the_trial_ended(
        days: int, nurture_days: dict[str, float]) -> None:
    # A 7-day trial's Trial Nurturing sent its value report on day 9 and its trial-to-paid offer on day 11,
    # after the trial had ended and Free Trial Onboarding had sent its last day and its follow-up. Both are
    # skipped from the trial's end; an assessment, with no end, is unchanged.
    h, _, _ = _trial(days)
    sent = {step: at / timedelta(days=1) for k, at in h.sent_at
            if ":trial_nurture:" in k and (step := k.split(":")[3]).startswith("email_")}
    assert dict(sorted(sent.items())) == nurture_days
    skipped = [t for t in h.transitions if t.startswith("trial_nurture: ") and "skipped" in t]
    assert all("at or after its skip_from ends_at" in t for t in skipped), skipped
    assert len(skipped) == (2 if days == 7 else 0)
