"""The whole playbook loads and validates; validation names every problem of a bad definition."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from services.journeys.domain.definitions import (
    DefinitionError,
    check,
    load,
    load_playbook,
    parse_duration,
    read_playbook,
)
from services.journeys.domain.steps import (
    BranchStep,
    GoalStep,
    JourneyStep,
    JumpStep,
    SendStep,
    SplitStep,
    Step,
    TaskStep,
    UpdateStep,
    WaitStep,
    spec_text,
)

CONTRACT_KEYS = {"skilled_professional", "family", "entrepreneur", "high_engagement", "re_engagement",
                 "trial_nurture", "lead_magnet", "webinar", "assessment", "trial_onboarding", "cart_abandonment",
                 "triggers", "sales_recycle", "customer"}


def test_every_playbook_definition_loads_and_validates() -> None:
    journeys = load_playbook()
    assert set(journeys) == CONTRACT_KEYS
    for journey in journeys.values():
        _, problems = check(journey.document, journeys=CONTRACT_KEYS, templates=journey.templates())
        assert problems == [], journey.key


@pytest.mark.parametrize("key", ["skilled_professional", "family", "entrepreneur"])
def test_segment_workflows_have_17_emails_over_60_days_in_five_stages(key: str) -> None:
    journey = load_playbook()[key]
    emails = [s for s in journey.steps.values() if s.id.startswith("email_")]
    assert [s.id for s in emails] == [f"email_{n:02d}" for n in range(1, 18)]
    assert {s.stage for s in emails} == set(journey.stages) and len(journey.stages) == 5
    waits = [s for s in journey.steps.values() if isinstance(s, WaitStep)]
    waited = sum(s.delay.days for s in waits if s.delay is not None)
    assert all(s.delay is not None for s in waits)
    assert waited == 59  # day 1 (immediate) to day 60
    assert all(isinstance(s, SendStep) and s.subject and s.cta and s.brief for s in emails)
    assert len(journey.triggers) == 5
    assert journey.step("email_15").stage == "decision"


def test_sequences_follow_the_seed_timings() -> None:
    journeys = load_playbook()
    webinar = journeys["webinar"]
    assert webinar.entity == "webinar_id" and webinar.category == "transactional"
    attendance = webinar.step("attendance")
    assert isinstance(attendance, WaitStep)
    assert attendance.on_event == "wait_thanks" and attendance.on_timeout == "email_05"
    assert len([s for s in journeys["trial_onboarding"].steps.values() if s.type == "send"]) == 9
    assert len([s for s in journeys["cart_abandonment"].steps.values() if s.type == "send"]) == 5
    tables = {r.name for r in journeys["triggers"].triggers}
    assert {"pricing_page", "bottom_funnel", "country_content", "no_opens_14d"} <= tables
    assert "triggers.pricing_page" in journeys["triggers"].templates()


def _doc() -> dict[str, Any]:
    return copy.deepcopy(read_playbook()["lead_magnet"])


def test_every_journey_has_one_of_the_api_kinds_and_always_on_rule_tables_say_so() -> None:
    # API.md: kind is segment | engagement | sequence. The behavioral trigger tables are an
    # event-triggered sequence; that every lead listens to them is kept in `mode`.
    journeys = load_playbook()
    assert {j.kind for j in journeys.values()} <= {"segment", "engagement", "sequence"}
    assert journeys["triggers"].kind == "sequence" and journeys["triggers"].mode == "always_on"
    assert {j.mode for k, j in journeys.items() if k != "triggers"} == {"flow"}
    # A version stored before, with the legacy kind, still loads as what it meant.
    legacy = {**read_playbook()["triggers"], "kind": "triggers"}
    legacy.pop("mode", None)
    old = load(legacy, version=1)
    assert (old.kind, old.mode) == ("sequence", "always_on")
    # A new definition (PUT) must say it the new way.
    _, problems = check(legacy, journeys=CONTRACT_KEYS)
    assert problems == ["kind: triggers is no longer a kind: use kind: sequence with mode: always_on"]
    with pytest.raises(DefinitionError) as err:
        load({**_doc(), "mode": "sometimes"})
    assert "mode: must be one of flow, always_on" in err.value.problems


def test_validation_lists_every_problem() -> None:
    doc = _doc()
    doc["steps"].insert(3, {"id": "orphan_jump", "type": "jump", "to": "nowhere"})
    doc["steps"] += [
        {"id": "loop_a", "type": "branch", "rules": [{"name": "r", "when": {"fact": "lead.score", "gt": 1},
                                                      "next": "loop_b"}], "default": "loop_b"},
        {"id": "loop_b", "type": "jump", "to": "loop_a"},
    ]
    doc["steps"][0]["channel"] = "pigeon"
    journey, problems = check(doc, journeys=CONTRACT_KEYS, templates=["lead_magnet.email_01"])
    assert journey is None
    text = "\n".join(problems)
    assert "unknown step 'nowhere'" in text
    assert "step loop_a: unreachable" in text
    assert "loop without a wait" in text
    assert "channel must be one of" in text
    # Structural problems do not hide the cross checks: templates and journeys are listed too.
    assert "step email_02: missing template 'lead_magnet.email_02'" in problems
    doc["steps"].insert(1, {"id": "hop", "type": "enrol", "journey": "no_such_journey"})
    _, problems = check(doc, journeys=CONTRACT_KEYS, templates=["lead_magnet.email_01"])
    assert "step hop: unknown journey 'no_such_journey'" in problems and "loop without a wait" in "\n".join(problems)
    doc = _doc()
    journey, problems = check(doc, journeys=CONTRACT_KEYS, templates=["lead_magnet.email_01"])
    assert journey is not None
    assert "step email_02: missing template 'lead_magnet.email_02'" in problems


def _looping(wait: dict[str, Any]) -> dict[str, Any]:
    """A sequence whose only way round goes through `wait` (id `w`), sending a transactional email each time."""
    return {"key": "loop_demo", "name": "Loop", "kind": "sequence", "category": "transactional",
            "entry": [{"name": "start", "events": ["loop_demo_start"]}],
            "steps": [{"id": "email_01", "type": "send"}, {"id": "w", "type": "wait", **wait},
                      {"id": "again", "type": "jump", "to": "email_01"}]}


@pytest.mark.parametrize("wait", [
    {"delay": "0s"}, {"delay": "0d"}, {"delay": 0},
    {"event": {"types": ["checklist_downloaded"]}, "timeout": {"delay": "0s"}, "on_event": "again",
     "on_timeout": "again"},
])
def test_a_loop_whose_only_wait_takes_no_time_is_refused(wait: dict[str, Any]) -> None:
    # A wait of no time ends at the instant it starts: the loop ran forever at one instant (a
    # transactional send in it was queued ~30,000 times in two minutes and the clock never settled).
    _, problems = check(_looping(wait), journeys={"loop_demo"}, templates=["loop_demo.email_01"])
    assert problems == ["loop without a wait: email_01 -> w -> again -> email_01 (w waits no time)"]


@pytest.mark.parametrize("wait", [
    {"delay": "1h"}, {"event": {"types": ["checklist_downloaded"]}, "timeout": {"delay": "1d"},
                      "on_event": "again", "on_timeout": "again"},
])
def test_a_loop_through_a_wait_that_takes_time_is_accepted(wait: dict[str, Any]) -> None:
    assert check(_looping(wait), journeys={"loop_demo"}, templates=["loop_demo.email_01"])[1] == []


def test_an_event_wait_of_no_timeout_still_waits_for_its_event() -> None:
    # Only the timeout's edge is instant: the event's edge waits for the event.
    doc = _looping({"event": {"types": ["checklist_downloaded"]}, "timeout": {"delay": "0s"},
                    "on_event": "again", "on_timeout": "done"})
    doc["steps"].append({"id": "done", "type": "end"})
    assert check(doc, journeys={"loop_demo"}, templates=["loop_demo.email_01"])[1] == []


def test_negative_cooldowns_and_reentry_delays_are_refused() -> None:
    # Each read as none at all (a trigger firing on every event, re-entry at once), silently.
    doc = _doc()
    doc["reentry"] = {"after": "-30d"}
    doc["entry"][0]["reentry"] = {"after": "-1d"}
    doc["triggers"] = [{"name": "nudge", "events": ["page_viewed"], "do": {"goto": "email_02"}, "cooldown": "-1d"}]
    _, problems = check(doc, journeys=CONTRACT_KEYS, templates=["lead_magnet.email_01", "lead_magnet.email_02"])
    entry = doc["entry"][0]["name"]
    assert "reentry: after must not be negative" in problems
    assert f"entry.{entry}.reentry: after must not be negative" in problems
    assert "triggers.nudge: cooldown must not be negative" in problems
    doc["reentry"], doc["entry"][0]["reentry"], doc["triggers"][0]["cooldown"] = {"after": "30d"}, "always", "0s"
    _, problems = check(doc, journeys=CONTRACT_KEYS, templates=["lead_magnet.email_01", "lead_magnet.email_02"])
    assert not [p for p in problems if "negative" in p]


def test_bad_conditions_and_unknown_journeys_are_reported() -> None:
    doc = _doc()
    doc["entry"][0]["when"] = {"fact": "lead.score", "gt": "high"}
    with pytest.raises(DefinitionError) as err:
        load(doc)
    assert any("needs a number" in p for p in err.value.problems)
    doc = _doc()
    doc["steps"].insert(1, {"id": "hop", "type": "enrol", "journey": "no_such_journey"})
    _, problems = check(doc, journeys=CONTRACT_KEYS)
    assert problems == ["step hop: unknown journey 'no_such_journey'"]


KIND_CLASSES: dict[str, type[Step]] = {
    "send": SendStep, "webhook": SendStep, "task": TaskStep, "update": UpdateStep, "wait": WaitStep,
    "branch": BranchStep, "split": SplitStep, "goal": GoalStep, "jump": JumpStep, "enrol": JourneyStep,
    "exit": JourneyStep, "listen": Step, "end": Step}


def test_every_step_is_read_once_into_the_record_of_its_type() -> None:
    """The engine reads typed fields; the document as written stays the journey's stored form."""
    docs = read_playbook()
    for key, journey in load_playbook().items():
        assert journey.document == docs[key]
        for raw in docs[key]["steps"]:
            s = journey.step(raw["id"])
            assert type(s) is KIND_CLASSES[raw["type"]], (key, s)
            if isinstance(s, WaitStep):
                assert s.delay == (parse_duration(raw["delay"]) if "delay" in raw else None)
                types = tuple(raw["event"]["types"]) if "event" in raw else None
                assert (s.event.types if s.event else None) == types
                assert (s.on_event, s.on_timeout, s.if_past) == (raw.get("on_event"), raw.get("on_timeout"),
                                                                 raw.get("if_past"))
                if "until" in raw:
                    assert s.until is not None and s.until.anchor == raw["until"].get("anchor")
                    assert s.until.offset == parse_duration(raw["until"].get("offset", 0))
                assert (s.not_after.text if s.not_after else None) == (
                    spec_text(raw["not_after"]) if "not_after" in raw else None)
            elif isinstance(s, SendStep):
                assert (s.subject, s.cta, s.brief) == (raw.get("subject"), raw.get("cta"), raw.get("brief"))
                assert s.category == raw.get("category", journey.category)
                assert s.skip_if_late == (parse_duration(raw["skip_if_late"]) if "skip_if_late" in raw else None)
                assert (s.skip_from.text if s.skip_from else None) == (
                    spec_text(raw["skip_from"]) if "skip_from" in raw else None)
            elif isinstance(s, BranchStep):
                assert [(r.name, r.when, r.next) for r in s.rules] == [
                    (r["name"], r["when"], r["next"]) for r in raw["rules"]]
                assert s.default == raw["default"]
            elif isinstance(s, TaskStep):
                assert (s.kind, s.title, s.due) == (raw["kind"], raw["title"], parse_duration(raw.get("due", "1d")))
            elif isinstance(s, UpdateStep):
                assert dict(s.set) == raw["set"]


def test_a_split_and_a_trigger_action_are_typed_too() -> None:
    doc = {"key": "ab", "kind": "sequence",
           "entry": [{"name": "go", "events": ["ping"]}],
           "triggers": [{"name": "hurry", "events": ["pricing_viewed"], "do": {"goto": "b", "pace": 0.5}}],
           "steps": [{"id": "pick", "type": "split", "variants": [{"name": "a", "weight": 1, "next": "a"},
                                                                   {"name": "b", "weight": 3, "next": "b"}]},
                     {"id": "a", "type": "end"}, {"id": "b", "type": "end"}]}
    journey = load(doc)
    split = journey.step("pick")
    assert isinstance(split, SplitStep)
    assert [(v.name, v.weight, v.next) for v in split.variants] == [("a", 1.0, "a"), ("b", 3.0, "b")]
    action = journey.triggers[0].action
    assert (action.goto, action.pace, action.queued()) == ("b", 0.5, [])
    assert journey.document is doc


def test_an_entry_rule_may_have_its_own_reentry_and_no_other_rule_may() -> None:
    doc = _doc()
    assert doc["entry"][0]["reentry"] == "always"  # the playbook's: every download starts the sequence
    doc["entry"].append({"name": "later", "events": ["page_viewed"], "reentry": {"after": "7d"}})
    journey = load(doc)
    assert [(r.name, r.reentry, r.reentry_after) for r in journey.entry] == [
        ("downloaded", "always", None), ("tool_used", None, None), ("later", "after", timedelta(days=7))]
    plain = _doc()
    plain["entry"][0].pop("reentry")
    assert journey.rule_reentry and not load(plain).rule_reentry
    doc["entry"][2]["reentry"] = "sometimes"
    doc["exit"] = [{"name": "gone", "events": ["unsubscribed"], "reentry": "always"}]
    with pytest.raises(DefinitionError) as err:
        load(doc)
    assert "entry.later.reentry: never, always or {after: <duration>}" in err.value.problems
    assert "exit.gone: reentry is an entry rule's (or the journey's)" in err.value.problems


def test_a_fact_or_event_type_that_never_occurs_is_refused() -> None:
    # A typo left the rule silently never holding: the branch always took its default, the entry never fired.
    doc = _doc()
    doc["entry"][0]["events"] = [*doc["entry"][0]["events"], "Resource Downloaded"]
    doc["exit"] = [{"name": "bought", "events": ["subscribed"], "outcome": "goal",
                    "when": {"fact": "event.propertys.plan", "exists": True}}]
    doc["steps"].insert(1, {"id": "engaged", "type": "branch", "default": "email_02", "rules": [
        {"name": "opened", "when": {"any": [{"fact": "journey.engagd", "gte": 1},
                                            {"fact": "leed.segment", "eq": "family"}]}, "next": "email_02"}]})
    doc["steps"].insert(2, {"id": "booked", "type": "wait", "event": {"types": ["Booked!"]},
                            "timeout": {"delay": "1d"}, "on_event": "email_02", "on_timeout": "email_02"})
    doc["steps"][1]["default"] = "booked"
    _, problems = check(doc, journeys=CONTRACT_KEYS, templates=["lead_magnet.email_01", "lead_magnet.email_02"])
    text = "\n".join(problems)
    entry = doc["entry"][0]["name"]
    assert f"entry.{entry}.events: 'Resource Downloaded' is not an event type" in text
    assert "exit.bought.when: unknown fact 'event.propertys.plan'" in text
    assert "step engaged.opened.when.any[0]: unknown fact 'journey.engagd'" in text
    assert "step engaged.opened.when.any[1]: unknown fact 'leed.segment'" in text
    assert "step booked.event.types: 'Booked!' is not an event type" in text
    # Every fact the engine gives a condition is known, and a custom event type is one.
    doc = _doc()
    doc["steps"].insert(1, {"id": "engaged", "type": "branch", "default": "email_02", "rules": [
        {"name": "r", "when": {"all": [{"fact": f, "exists": True} for f in (
            "lead.attributes.study_level", "lead.segment", "event.type", "event.properties.form", "signals",
            "journeys.webinar", "journey.engaged", "journey.days_in_journey")]}, "next": "email_02"}]})
    doc["entry"][0]["events"] = [*doc["entry"][0]["events"], "biometrics_booked"]
    _, problems = check(doc, journeys=CONTRACT_KEYS, templates=["lead_magnet.email_01", "lead_magnet.email_02"])
    assert not [p for p in problems if "unknown fact" in p or "not an event type" in p], problems


def test_a_stored_version_the_new_checks_refuse_still_loads() -> None:
    # Versions stored before these checks keep loading (a version that does not load leaves its leads'
    # enrolments without a definition): only a new definition (PUT, `check`) is refused.
    doc = _looping({"delay": "0s"})
    doc["triggers"] = [{"name": "nudge", "events": ["Page Viewed"], "when": {"fact": "leed.x", "eq": 1},
                        "do": {"goto": "email_01"}, "cooldown": "-1d"}]
    assert load(doc, version=3).version == 3
    _, problems = check(doc, journeys={"loop_demo"}, templates=["loop_demo.email_01"])
    assert len(problems) == 4, problems


def test_a_trigger_that_sends_a_step_of_the_flow_is_refused() -> None:
    # The step's template went twice: by the trigger, and again when the flow reached the step.
    doc = _doc()
    doc["triggers"] = [{"name": "scholarships", "events": ["page_viewed"], "do": {"send": "email_02"},
                        "when": {"fact": "event.properties.category", "eq": "scholarships"}}]
    _, problems = check(doc, journeys=CONTRACT_KEYS, templates=["lead_magnet.email_01", "lead_magnet.email_02"])
    assert "triggers.scholarships: send names email_02, a step of the flow: it would run twice (now, and again " \
           "when the flow reaches it); name a side step the flow does not reach, or goto email_02" in problems
    # A side step (after the end, reached by nothing) is what a trigger sends; a goto may name the flow's.
    doc["steps"].append({"id": "scholarships_now", "type": "send"})
    doc["triggers"][0]["do"] = {"send": "scholarships_now"}
    templates = ["lead_magnet.email_01", "lead_magnet.email_02", "lead_magnet.scholarships_now"]
    _, problems = check(doc, journeys=CONTRACT_KEYS, templates=templates)
    assert not [p for p in problems if "a step of the flow" in p], problems
    doc["triggers"][0]["do"] = {"goto": "email_02"}
    _, problems = check(doc, journeys=CONTRACT_KEYS, templates=templates)
    assert not [p for p in problems if "a step of the flow" in p], problems
