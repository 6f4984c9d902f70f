"""The engine's step semantics on small journeys written for the test (not the playbook), so every
explanation, time and payload can be written out: waits at their exact moment, branches at their
boundary, re-entry after exactly its delay, triggers once / after their cooldown / changing the pace,
event waits and their timeouts, pauses that keep the time left, enrol and exit steps, erasure,
playbook-wide exits, the inactivity thresholds and version migration."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from nurture.busmessage import LeadSnapshot
from nurture.clock import VIRTUAL_EPOCH
from services.journeys.domain.definitions import DefinitionError, GlobalExit, Journey, PlaybookSettings, load
from services.journeys.domain.engine import Engine, UnknownJourney, migrate
from services.journeys.domain.state import (
    ACTIVE,
    COMPLETED,
    EXITED,
    PAUSED,
    Effect,
    Enrollment,
    LeadState,
    Outcome,
    SendPayload,
    StepRun,
    TaskPayload,
    Transition,
    UpdatePayload,
    iso,
)
from tests.bus_messages import bus_message

T0 = VIRTUAL_EPOCH
ANY = {"fact": "event.type", "exists": True}


@pytest.fixture(autouse=True)
def _compile_rule_sets_afresh() -> None:
    """Compile each test's journey rule sets from the definitions again: the process-wide cache would
    otherwise answer with what an earlier test (or the process mutmut forks from) compiled."""
    from services.journeys.domain import rulesets

    rulesets._cache.clear()


def journey(key: str, steps: list[dict[str, Any]], *, version: int = 1, events: tuple[str, ...] = ("ping",),
            **fields: Any) -> Journey:
    doc = {"key": key, "kind": "sequence", "category": "transactional",
           "entry": [{"name": "go", "events": list(events), "when": ANY}], "steps": steps, **fields}
    return load(doc, version=version)


class Mini:
    """One lead and the given journeys; effects answered `answer` (sent unless a test changes it)."""

    def __init__(self, *journeys: Journey, settings: PlaybookSettings | None = None, score: int = 10) -> None:
        self.by = {(j.key, j.version): j for j in journeys}
        self.live = list(journeys)   # what is published; a test may change it
        self.engine = Engine(settings or PlaybookSettings(), lambda k, v: self.by.get((k, v)), lambda: self.live)
        self.lead: dict[str, Any] = {"id": "l-1", "score": score, "consent": {"email": True}}
        self.state = LeadState("l-1")
        self.now = T0
        self.log: list[str] = []
        self.types: list[str] = []
        self.transitions: list[Transition] = []
        self.runs: list[StepRun] = []
        self.effects: list[Effect] = []
        self.answer = "sent"
        self.n = 0

    def take(self, out: Outcome) -> Outcome:
        self.log += [t.summary for t in out.transitions]
        self.types += [t.type for t in out.transitions]
        self.transitions += out.transitions
        self.runs += out.runs
        return out

    def record(self, summary_start: str) -> tuple[Any, ...]:
        """The one transition whose summary starts so: (type, step_from, step_to, stage, rule, facts)."""
        [t] = [t for t in self.transitions if t.summary.startswith(summary_start)]
        return t.type, t.step_from, t.step_to, t.stage, t.rule, t.facts

    def message(self, etype: str, **props: Any) -> Outcome:
        self.n += 1
        msg = bus_message(f"m{self.n}", "l-1", etype, properties=props, lead=dict(self.lead),
                          occurred_at=iso(self.now))
        out = self.take(self.engine.on_message(self.state, msg, self.now))
        self.drive()
        return out

    def drive(self) -> None:
        for ekey in sorted(self.state.enrollments):
            for side in (True, False):
                out = Outcome()
                while (effect := self.engine.next_effect(self.state, ekey, self.now, out, side=side)) is not None:
                    self.effects.append(effect)
                    self.engine.complete(self.state, effect, self.now, out, status=self.answer)
                self.take(out)

    def at(self, **delta: float) -> None:
        self.now = T0 + timedelta(**delta)
        self.drive()

    def e(self, ekey: str) -> Any:
        return self.state.enrollments[ekey]

    def keys(self) -> list[str]:
        return [f.dedupe_key for f in self.effects]


FLOW = [
    {"id": "hello", "type": "send", "stage": "one", "subject": "Hi", "cta": "Go"},
    {"id": "pause", "type": "wait", "delay": "2d"},
    {"id": "check", "type": "branch", "default": "bye",
     "rules": [{"name": "hot", "when": {"fact": "lead.score", "gte": 50}, "next": "win"}]},
    {"id": "win", "type": "goal", "name": "qualified"},
    {"id": "bye", "type": "task", "stage": "two", "kind": "follow_up", "title": "Call"},
    {"id": "done", "type": "end"},
]
STAGES = [{"id": "one", "name": "Stage One"}, {"id": "two", "name": "Stage Two"}]


def test_a_flow_runs_its_steps_at_their_moment_with_their_explanations() -> None:
    m = Mini(journey("flow", FLOW, stages=STAGES, name="The Flow"))
    m.message("ping")
    [send] = m.effects
    assert (send.kind, send.ekey, send.step, send.dedupe_key, send.occurrence, send.side) == (
        "send", "flow", "hello", "l-1:flow:1:hello:1.1", "1.1", False)
    assert send.payload == SendPayload(template="flow.hello", channel="email", category="transactional",
                                       journey="flow", version=1, step="hello",
                                       context={"subject": "Hi", "cta": "Go", "stage": "one", "entered_by": "m1"})
    e = m.e("flow")
    assert (e.status, e.step, e.due, e.waiting, e.stage, e.last_sent) == (
        ACTIVE, "check", T0 + timedelta(days=2), "delay", "one", "hello")
    m.at(days=2, seconds=-1)
    assert len(m.effects) == 1
    m.at(days=2)
    [_, task] = m.effects
    assert (task.kind, task.step, task.dedupe_key) == ("task", "bye", "l-1:flow:1:bye:1.1")
    assert task.payload == TaskPayload(kind="follow_up", title="Call", priority="normal",
                                       due_at=T0 + timedelta(days=3),
                                       details={"journey": "flow", "step": "bye", "stage": "two", "score": 10})
    assert (e.status, e.outcome, e.ended_at, e.step, e.due) == (COMPLETED, "end", T0 + timedelta(days=2), "done", None)
    assert m.log == ["flow: entered: ping type=ping matched rule go", "flow: entered Stage One stage",
                     "flow: branch check took the default bye: no rule matched",
                     "flow: entered Stage Two stage after 48.0 h in one", "flow: completed The Flow"]
    assert m.types == ["entered", "stage", "branch", "stage", "completed"]
    assert m.record("flow: completed") == ("completed", "done", None, "two", "end", {"last_sent": "hello"})
    assert m.record("flow: branch") == ("branch", "check", "bye", "one", None, {})
    assert m.record("flow: entered Stage Two") == ("stage", None, "bye", "two", None,
                                                   {"from": "one", "hours_in_previous": 48.0})
    assert m.record("flow: entered:") == ("entered", None, "hello", None, "go", {"event.type": "ping"})
    d2 = T0 + timedelta(days=2)
    assert [(t.at, t.lead_id, t.ekey, t.journey, t.version) for t in m.transitions] == [
        (T0, "l-1", "flow", "flow", 1), (T0, "l-1", "flow", "flow", 1)] + [(d2, "l-1", "flow", "flow", 1)] * 3
    assert [(r.lead_id, r.ekey, r.journey, r.version, r.step, r.step_type, r.occurrence, r.dedupe_key, r.status,
             r.at, r.stage, r.message_id, r.detail) for r in m.runs] == [
        ("l-1", "flow", "flow", 1, "hello", "send", "1.1", "l-1:flow:1:hello:1.1", "sent", T0, "one", "", ""),
        ("l-1", "flow", "flow", 1, "pause", "wait", "1.1", "l-1:flow:1:pause:1.1", "done", T0, "one", "", ""),
        ("l-1", "flow", "flow", 1, "check", "branch", "1.1", "l-1:flow:1:check:1.1", "done", d2, "one", "", ""),
        ("l-1", "flow", "flow", 1, "bye", "task", "1.1", "l-1:flow:1:bye:1.1", "sent", d2, "two", "", ""),
        ("l-1", "flow", "flow", 1, "done", "end", "1.1", "l-1:flow:1:done:1.1", "done", d2, "two", "", "")]
    assert m.engine.next_effect(m.state, "nope", d2, Outcome()) is None     # not enrolled
    assert m.engine.next_effect(m.state, "flow", d2, Outcome()) is None     # ended
    assert m.state.history["flow"] == {"entries": 1, "ended_at": iso(T0 + timedelta(days=2))}


@pytest.mark.parametrize(("score", "qualified"), [(50, True), (49, False), (51, True)])
def test_a_branch_decides_at_its_boundary(score: int, qualified: bool) -> None:
    m = Mini(journey("flow", FLOW, stages=STAGES), score=score)
    m.message("ping")
    m.at(days=2)
    e = m.e("flow")
    if qualified:
        assert (e.status, e.outcome) == (COMPLETED, "qualified")
        assert m.log[-2:] == [f"flow: branch check took win: score={score} matched rule hot",
                              "flow: goal reached: qualified"]
        assert m.types[-1] == "goal" and [f.step for f in m.effects] == ["hello"]
    else:
        assert (e.status, e.outcome) == (COMPLETED, "end")
        assert [f.step for f in m.effects] == ["hello", "bye"]


@pytest.mark.parametrize(("reentry", "after", "entered"), [
    ({"after": "3d"}, timedelta(days=3), True),
    ({"after": "3d"}, timedelta(days=3, seconds=-1), False),
    ("never", timedelta(days=30), False),
    ("always", timedelta(0), True),
])
def test_re_entry_follows_the_definition(reentry: Any, after: timedelta, entered: bool) -> None:
    m = Mini(journey("flow", FLOW, stages=STAGES, reentry=reentry))
    m.message("ping")
    m.at(days=2)
    assert m.e("flow").status == COMPLETED
    m.now = T0 + timedelta(days=2) + after
    old_token = m.e("flow").token
    m.message("ping")
    e = m.e("flow")
    if entered:
        assert e.token > old_token     # the old enrolment's timers are stale
        assert (e.status, e.entry, e.step) == (ACTIVE, 2, "check")
        assert m.keys()[-1] == "l-1:flow:1:hello:2.1"
        assert m.state.history["flow"]["entries"] == 2
    else:
        assert e.status == COMPLETED and len(m.effects) == 2


def test_a_live_enrolment_is_not_entered_twice() -> None:
    m = Mini(journey("flow", FLOW, stages=STAGES, reentry="always"))
    m.message("ping")
    m.message("ping")
    assert m.e("flow").entry == 1 and len(m.effects) == 1
    assert m.log.count("flow: entered: ping type=ping matched rule go") == 1


def test_an_unknown_journey_is_an_error() -> None:
    m = Mini(journey("flow", FLOW, stages=STAGES))
    with pytest.raises(UnknownJourney, match="journey nope v3 is not known"):
        m.engine.journey("nope", 3)
    assert m.engine.priority_of(m.state, "nope") == 0
    m.message("ping")
    assert m.engine.priority_of(m.state, "flow") == 50


EVENT_WAIT = [
    {"id": "ask", "type": "wait", "event": {"types": ["answer"], "match": "case_id"},
     "timeout": {"delay": "1d"}, "on_event": "yes", "on_timeout": "no"},
    {"id": "yes", "type": "update", "set": {"answered": True}, "next": "done"},
    {"id": "no", "type": "update", "set": {"answered": False}},
    {"id": "done", "type": "end"},
]


def test_an_event_wait_times_out_exactly_at_its_timeout() -> None:
    m = Mini(journey("ask", EVENT_WAIT, entity="case_id"))
    m.message("ping", case_id="c1")
    e = m.e("ask#c1")
    assert (e.step, e.waiting, e.due, e.instance, e.anchors) == ("ask", "event", T0 + timedelta(days=1), "c1",
                                                                 {"case_id": "c1"})
    m.at(days=1, seconds=-1)
    assert m.effects == []
    m.at(days=1)
    [update] = m.effects
    assert (update.kind, update.step, update.payload, update.dedupe_key, update.occurrence, update.side) == (
        "update", "no", UpdatePayload({"answered": False}), "l-1:ask:1:no:c1@1.1", "1.1", False)
    assert m.log == ["ask: entered: ping type=ping matched rule go",
                     f"ask: waiting at ask for answer until {iso(T0 + timedelta(days=1))}",
                     "ask: no answer by the timeout of ask: going to no", "ask: completed ask"]
    assert m.types == ["entered", "wait", "timeout", "completed"]
    assert m.record("ask: no answer") == ("timeout", "ask", "no", None, None, {})
    assert m.record("ask: waiting") == ("wait", "ask", None, None, None, {})


@pytest.mark.parametrize(("props", "answered"), [
    ({"case_id": "c1"}, True),
    ({}, True),                     # no case named: it is this enrolment's (the only one)
    ({"case_id": "c2"}, False),     # another case's answer
])
def test_an_event_wait_takes_the_event_of_its_own_entity(props: dict[str, Any], answered: bool) -> None:
    m = Mini(journey("ask", EVENT_WAIT, entity="case_id"))
    m.message("ping", case_id="c1")
    m.at(hours=5)
    m.message("answer", **props)
    if answered:
        [update] = m.effects
        assert update.payload == UpdatePayload({"answered": True})
        assert "ask: answer arrived at ask: going to yes" in m.log
        assert m.record("ask: answer arrived") == ("event", "ask", "yes", None, None, {})
        assert m.e("ask#c1").status == COMPLETED
    else:
        assert m.effects == [] and m.e("ask#c1").waiting == "event"
        m.at(days=1)
        assert [f.payload for f in m.effects] == [UpdatePayload({"answered": False})]


TRIGGERED = [{"id": "idle", "type": "listen"},
             {"id": "note", "type": "send", "subject": "Note"}]


@pytest.mark.parametrize(("rule", "pokes", "sent"), [
    ({}, [0, 1, 48], 1),                                  # once (the default without a cooldown)
    ({"cooldown": "1h"}, [0, 0.999, 1], 2),                # again exactly after its cooldown, not before
    ({"cooldown": "1h"}, [0, 1, 2], 3),
    ({"once": False}, [0, 0, 0], 3),
])
def test_a_trigger_fires_once_or_after_its_cooldown(rule: dict[str, Any], pokes: list[float], sent: int) -> None:
    j = journey("t", TRIGGERED, triggers=[{"name": "nudge", "events": ["poke"], "when": ANY,
                                           "do": {"send": "note"}, **rule}])
    m = Mini(j)
    m.message("ping")
    for hours in pokes:
        m.now = T0 + timedelta(hours=hours)
        m.message("poke")
    assert [f.dedupe_key for f in m.effects] == [f"l-1:t:1:note:1.{n}" for n in range(1, sent + 1)]
    assert all(f.side for f in m.effects)
    assert m.log.count("t: queued note: poke type=poke matched rule nudge") == sent
    assert m.e("t").status == ACTIVE and m.e("t").side == []


SLOW = [{"id": "first", "type": "update", "set": {"a": 1}},
        {"id": "wait", "type": "wait", "delay": "4d"},
        {"id": "second", "type": "update", "set": {"a": 2}},
        {"id": "done", "type": "end"}]


@pytest.mark.parametrize(("pace", "due"), [(0.5, timedelta(days=2, hours=12)), (2.0, timedelta(days=7))])
def test_a_pace_trigger_rescales_the_time_left_of_the_running_wait(pace: float, due: timedelta) -> None:
    j = journey("slow", SLOW, triggers=[{"name": "faster", "events": ["poke"], "when": ANY, "do": {"pace": pace}}])
    m = Mini(j)
    m.message("ping")
    token = m.e("slow").token
    m.at(days=1)
    m.message("poke")
    e = m.e("slow")
    assert (e.pace, e.due, e.token) == (pace, T0 + due, token + 1)
    assert m.log[-1] == f"slow: pace set to {pace}: poke type=poke matched rule faster"
    m.now = T0 + due - timedelta(seconds=1)
    m.drive()
    assert [f.step for f in m.effects] == ["first"]
    m.at(seconds=due.total_seconds())
    assert [f.step for f in m.effects] == ["first", "second"]


def test_a_pace_set_before_a_wait_scales_that_wait() -> None:
    steps = [{"id": "idle", "type": "wait", "event": {"types": ["go"]}, "timeout": {"delay": "10d"},
              "on_event": "wait", "on_timeout": "done"}, *SLOW[1:]]
    j = journey("slow", steps, triggers=[{"name": "faster", "events": ["poke"], "when": ANY, "do": {"pace": 0.25}}])
    m = Mini(j)
    m.message("ping")
    m.message("poke")          # not a delay wait: only the pace changes
    assert (m.e("slow").pace, m.e("slow").due) == (0.25, T0 + timedelta(days=10))
    m.message("go")
    assert (m.e("slow").step, m.e("slow").due) == ("second", T0 + timedelta(days=1))


GOTO = [{"id": "a", "type": "wait", "delay": "5d", "stage": "one"},
        {"id": "b", "type": "update", "set": {"x": 1}, "stage": "one"},
        {"id": "c", "type": "update", "set": {"x": 2}, "stage": "two"},
        {"id": "done", "type": "end"}]


@pytest.mark.parametrize(("target", "said"), [("c", "jumped to two stage"), ("b", "jumped to b")])
def test_a_goto_trigger_jumps_and_says_where(target: str, said: str) -> None:
    j = journey("g", GOTO, stages=[{"id": "one", "name": "Stage One"}, {"id": "two", "name": "Stage Two"}],
                triggers=[{"name": "jump", "events": ["poke"], "when": ANY, "do": {"goto": target}}])
    m = Mini(j)
    m.message("ping")
    m.at(hours=1)
    m.message("poke")
    assert f"g: {said}: poke type=poke matched rule jump" in m.log
    assert [f.step for f in m.effects] == (["c"] if target == "c" else ["b", "c"])
    assert m.e("g").status == COMPLETED


def test_trigger_actions_enrol_and_exit_other_journeys() -> None:
    other = journey("other", [{"id": "idle", "type": "listen"}], events=("never",))
    boss = journey("boss", [{"id": "idle", "type": "listen"}], triggers=[
        {"name": "recruit", "events": ["hire"], "when": ANY, "do": {"enrol": "other"}},
        {"name": "fire", "events": ["sack"], "when": ANY, "do": {"exit": "other"}},
        {"name": "ghost", "events": ["haunt"], "when": ANY, "do": {"enrol": "nobody"}}])
    m = Mini(boss, other)
    m.message("ping")
    m.message("haunt")
    assert set(m.state.enrollments) == {"boss"}
    m.message("hire")
    assert m.e("other").status == ACTIVE
    assert "other: enrolled by boss rule recruit: hire type=hire matched rule recruit" in m.log
    m.message("sack")
    assert (m.e("other").status, m.e("other").outcome) == (EXITED, "boss.fire")
    assert "other: exited by boss rule fire: sack type=sack matched rule fire" in m.log
    assert m.e("boss").status == ACTIVE


def test_enrol_and_exit_steps_act_on_other_journeys_not_on_themselves() -> None:
    other = journey("other", [{"id": "idle", "type": "listen"}], events=("never",))
    boss = journey("boss", [{"id": "recruit", "type": "enrol", "journey": "other"},
                            {"id": "nobody", "type": "enrol", "journey": "ghost"},
                            {"id": "wait", "type": "wait", "delay": "1d"},
                            {"id": "fire", "type": "exit", "journey": "other"},
                            {"id": "self", "type": "exit", "journey": "boss"},
                            {"id": "done", "type": "end"}], reentry="always")
    m = Mini(boss, other)
    m.message("ping")
    assert m.e("other").status == ACTIVE and "other: enrolled by boss step recruit" in m.log
    assert set(m.state.enrollments) == {"boss", "other"}
    m.at(days=1, seconds=-1)
    assert m.e("other").status == ACTIVE
    m.at(days=1)
    assert (m.e("other").status, m.e("other").outcome) == (EXITED, "boss.fire")
    assert "other: exited by boss step fire" in m.log
    assert (m.e("boss").status, m.e("boss").outcome) == (COMPLETED, "end")


def test_a_journey_pauses_another_and_gives_back_exactly_the_time_left() -> None:
    low = journey("low", SLOW, priority=10)
    high = journey("high", [{"id": "w", "type": "wait", "delay": "2d"}, {"id": "done", "type": "end"}],
                   events=("urgent",), pauses=["low"], priority=90)
    m = Mini(high, low)
    m.message("ping")
    token = m.e("low").token
    m.at(days=1)
    m.message("urgent")
    low_e = m.e("low")
    assert (low_e.status, low_e.paused_remaining, low_e.token) == (PAUSED, 3 * 86400.0, token + 1)
    assert "low: paused while high runs" in m.log
    m.at(days=2)                         # the paused wait's old due time: nothing runs
    assert [f.step for f in m.effects] == ["first"]
    m.at(days=3)                         # high ends: low resumes with its 3 days left
    assert (low_e.status, low_e.due, low_e.paused_remaining) == (ACTIVE, T0 + timedelta(days=6), None)
    assert f"low: resumed at second; next step at {iso(T0 + timedelta(days=6))}" in m.log
    assert m.record("low: resumed")[:3] == ("resumed", None, "second")
    assert m.record("low: paused")[:3] == ("paused", "second", None)
    m.at(days=6, seconds=-1)
    assert [f.step for f in m.effects] == ["first"]
    m.at(days=6)
    assert [f.step for f in m.effects] == ["first", "second"]


def test_an_enrolment_entering_under_a_running_pauser_starts_paused() -> None:
    low = journey("low", SLOW, events=("late",))
    high = journey("high", [{"id": "w", "type": "wait", "delay": "2d"}, {"id": "done", "type": "end"}],
                   pauses=["sequence"])
    m = Mini(high, low)
    m.message("ping")
    m.message("late")
    assert m.e("low").status == PAUSED and m.effects == []
    # Named: the timeline says which journey holds it (it read "a higher-priority journey").
    assert "low: paused while high runs" in m.log
    m.at(days=2)
    assert m.e("low").status == ACTIVE and [f.step for f in m.effects] == ["first"]


def test_an_erasure_ends_every_live_enrolment() -> None:
    other = journey("other", [{"id": "idle", "type": "listen"}])
    done = journey("done", [{"id": "end", "type": "end"}])
    m = Mini(journey("flow", FLOW, stages=STAGES), other, done)
    m.message("ping")
    out = m.message("lead_erased")
    assert out.erased and not Outcome().erased
    assert {k: (e.status, e.outcome) for k, e in m.state.enrollments.items()} == {
        "flow": (EXITED, "erased"), "other": (EXITED, "erased"), "done": (COMPLETED, "end")}
    assert sorted(t.summary for t in out.transitions) == ["flow: exited: lead erased", "other: exited: lead erased"]


@pytest.mark.parametrize(("why", "said"), [("sales said no", "exited: lost (playbook exit closed: sales said no)"),
                                           ("", "exited: lost (playbook exit closed)")])
def test_a_playbook_wide_exit_ends_the_journeys_of_its_categories_but_those_it_keeps(why: str, said: str) -> None:
    settings = PlaybookSettings(exits=(GlobalExit("closed", frozenset({"lost"}), frozenset({"nurture"}),
                                                  frozenset({"kept"}), why),))
    nurture = journey("nur", [{"id": "idle", "type": "listen"}], category="nurture")
    kept = journey("kept", [{"id": "idle", "type": "listen"}], category="nurture")
    other = journey("tx", [{"id": "idle", "type": "listen"}])
    m = Mini(nurture, kept, other, settings=settings)
    m.message("ping")
    m.message("lost")
    assert {k: e.status for k, e in m.state.enrollments.items()} == {"nur": EXITED, "kept": ACTIVE, "tx": ACTIVE}
    assert (m.e("nur").outcome, m.log[-1]) == ("closed", f"nur: {said}")


def test_inactivity_is_posted_at_each_threshold_after_the_last_engagement() -> None:
    settings = PlaybookSettings(inactivity_days=(7, 3))
    quiet = journey("quiet", [{"id": "idle", "type": "listen"}], events=("inactivity",),
                    entry=[{"name": "week", "events": ["inactivity"],
                            "when": {"all": [{"fact": "event.properties.days", "gte": 7},
                                             {"fact": "event.properties.since", "exists": True}]}}])
    m = Mini(quiet, settings=settings)
    m.message("page_viewed")
    assert (m.state.last_engagement, m.state.inactive_due) == (T0, T0 + timedelta(days=3))
    token = m.state.inactive_token
    assert m.engine.inactivity_due(m.state, token, T0 + timedelta(days=3, seconds=-1)).transitions == []
    assert m.engine.inactivity_due(m.state, token - 1, T0 + timedelta(days=3)).transitions == []
    m.engine.inactivity_due(m.state, token, T0 + timedelta(days=3))
    assert "quiet" not in m.state.enrollments
    assert (m.state.inactive_step, m.state.inactive_due) == (1, T0 + timedelta(days=7))
    out = m.engine.inactivity_due(m.state, m.state.inactive_token, T0 + timedelta(days=7))
    assert [t.summary for t in out.transitions] == [
        f"quiet: entered: inactivity days=7 since={iso(T0)} matched rule week"]
    assert (m.state.inactive_step, m.state.inactive_due) == (2, None)
    assert m.engine.inactivity_due(m.state, m.state.inactive_token, T0 + timedelta(days=30)).transitions == []


def test_an_engagement_restarts_the_inactivity_thresholds() -> None:
    m = Mini(journey("flow", FLOW, stages=STAGES), settings=PlaybookSettings(inactivity_days=(3, 7)))
    m.message("ping")                                 # not an engagement: the clock starts at it
    assert (m.state.last_engagement, m.state.inactive_due) == (T0, T0 + timedelta(days=3))
    m.engine.inactivity_due(m.state, m.state.inactive_token, T0 + timedelta(days=3))
    assert m.state.inactive_step == 1
    m.now = T0 + timedelta(days=4)
    m.message("email_opened")
    assert (m.state.last_engagement, m.state.inactive_step, m.state.inactive_due) == (
        T0 + timedelta(days=4), 0, T0 + timedelta(days=7))
    m.now = T0 + timedelta(days=5)
    m.message("page_viewed")
    assert m.state.inactive_due == T0 + timedelta(days=8)


def test_migrate_moves_a_live_enrolment_by_its_step_mapping() -> None:
    v1 = journey("flow", FLOW, stages=STAGES)
    v2 = journey("flow", [{**FLOW[0], "id": "hi"}, *FLOW[1:]], stages=STAGES, version=2)
    m = Mini(v1)
    m.message("ping")
    e = m.e("flow")
    out = Outcome()
    token = e.token
    assert migrate(m.state, e, v2, {"check": "nowhere"}, T0, out) is None and e.version == 1
    assert migrate(m.state, e, v2, {}, T0 + timedelta(hours=1), out) == "check"
    assert (e.version, e.step, e.token, e.due, e.waiting) == (2, "check", token + 1, T0 + timedelta(days=2), "delay")
    [t] = out.transitions
    assert (t.type, t.summary, t.step_from, t.step_to, t.version) == (
        "migrated", "flow: migrated from v1 step check to v2 step check", "check", "check", 2)
    assert out.touched == {"flow"}


def test_migrating_an_event_wait_to_a_step_without_the_event_runs_it_now() -> None:
    v1 = journey("ask", EVENT_WAIT, entity="case_id")
    v2 = journey("ask", [EVENT_WAIT[2], EVENT_WAIT[1], EVENT_WAIT[3]], entity="case_id", version=2)
    m = Mini(v1)
    m.message("ping", case_id="c1")
    e = m.e("ask#c1")
    now = T0 + timedelta(hours=2)
    assert migrate(m.state, e, v2, {"ask": "no"}, now, Outcome()) == "no"
    assert (e.waiting, e.due) == (None, now)


def test_an_enrolment_of_a_journey_no_longer_published_still_follows_its_own_rules() -> None:
    j = journey("old", [{"id": "idle", "type": "listen"}],
                exit=[{"name": "stop", "events": ["halt"], "when": ANY, "outcome": "goal"}])
    m = Mini(j)
    m.message("ping")
    m.live = []
    m.message("halt")
    assert (m.e("old").status, m.e("old").outcome) == (COMPLETED, "stop")
    assert m.log[-1] == "old: goal reached: halt type=halt matched rule stop"


NEWS = [{"id": "n1", "type": "send", "subject": "One"}, {"id": "n2", "type": "send", "subject": "Two"},
        {"id": "n3", "type": "send", "subject": "Three"}, {"id": "done", "type": "end"}]


def test_the_budget_holds_the_third_nurture_send_until_the_first_leaves_the_window() -> None:
    m = Mini(journey("news", NEWS, category="nurture"), settings=PlaybookSettings(budget_max=2,
                                                                                  budget_window=timedelta(days=1)))
    m.message("ping")
    assert [f.step for f in m.effects] == ["n1", "n2"]
    e = m.e("news")
    assert (e.step, e.due, e.waiting) == ("n3", T0 + timedelta(days=1), "budget")
    assert m.log[-1] == f"news: n3 held by the frequency budget until {iso(T0 + timedelta(days=1))}"
    assert m.types[-1] == "deferred"
    assert m.record("news: n3 held")[:3] == ("deferred", None, "n3")
    m.at(days=1, seconds=-1)
    assert len(m.effects) == 2
    m.at(days=1)
    assert [f.step for f in m.effects] == ["n1", "n2", "n3"] and e.status == COMPLETED
    assert m.state.sends == [iso(T0 + timedelta(days=1))]   # the two of T0 are out of the window


@pytest.mark.parametrize(("answer", "counted", "last_sent"), [
    ("sent", True, "n2"), ("scheduled", True, "n2"), ("duplicate", True, "n2"),
    ("suppressed", False, None), ("failed", False, None)])
def test_only_mail_that_went_counts_in_the_budget_and_as_last_sent(answer: str, counted: bool,
                                                                   last_sent: str | None) -> None:
    m = Mini(journey("news", NEWS, category="nurture"), settings=PlaybookSettings(budget_max=2))
    m.answer = answer
    m.message("ping")
    assert [f.step for f in m.effects] == (["n1", "n2"] if counted else ["n1", "n2", "n3"])
    assert len(m.state.sends) == (2 if counted else 0)
    assert m.e("news").last_sent == last_sent


def test_transactional_sends_skip_the_budget() -> None:
    m = Mini(journey("news", NEWS), settings=PlaybookSettings(budget_max=1))
    m.message("ping")
    assert [f.step for f in m.effects] == ["n1", "n2", "n3"] and m.state.sends == []


def test_an_exempt_send_goes_past_the_budget_and_still_counts_in_it() -> None:
    steps = [NEWS[0], {**NEWS[1], "budget": "exempt"}, *NEWS[2:]]
    m = Mini(journey("news", steps, category="nurture"), settings=PlaybookSettings(budget_max=1))
    m.message("ping")
    # n1 takes the one slot; n2 is exempt and goes at once; n3 waits, the window now holding two sends.
    assert [f.step for f in m.effects] == ["n1", "n2"]
    # The exemption travels to messaging with the send, so its own caps and gap do not hold n2 either.
    assert [f.payload.budget_exempt for f in m.effects if isinstance(f.payload, SendPayload)] == [False, True]
    assert len(m.state.sends) == 2 and m.e("news").waiting == "budget"
    assert m.e("news").due == T0 + timedelta(days=1)


def test_budget_is_counted_or_exempt_and_only_on_sends() -> None:
    doc = {"key": "bad", "kind": "sequence", "category": "nurture",
           "entry": [{"name": "go", "events": ["ping"], "when": ANY}],
           "steps": [{**NEWS[0], "budget": "sometimes"}, {"id": "w", "type": "wait", "delay": "1h", "budget": "exempt"},
                     NEWS[3]]}
    with pytest.raises(DefinitionError) as err:
        load(doc)
    assert "step n1: budget must be counted or exempt" in err.value.problems
    assert "step w: budget applies to send steps" in err.value.problems


def test_a_step_category_overrides_its_journey() -> None:
    steps = [{**NEWS[0], "category": "nurture"}, {**NEWS[1], "category": "nurture"}, *NEWS[2:]]
    m = Mini(journey("news", steps), settings=PlaybookSettings(budget_max=1))
    m.message("ping")
    assert [(f.step, getattr(f.payload, "category", None)) for f in m.effects] == [("n1", "nurture")]
    assert m.e("news").waiting == "budget"


def test_a_held_side_send_waits_for_its_slot_while_tasks_go() -> None:
    steps = [{"id": "idle", "type": "listen"}, {"id": "note", "type": "send", "subject": "N"},
             {"id": "call", "type": "task", "kind": "sales_alert", "title": "Call", "priority": "high", "due": "2h"}]
    j = journey("t", steps, category="nurture", triggers=[
        {"name": "mail", "events": ["poke"], "when": ANY, "do": {"send": "note"}},
        {"name": "sales", "events": ["hot"], "when": ANY, "do": {"task": "call"}}])
    m = Mini(j, settings=PlaybookSettings(budget_max=1))
    m.state.sends = [iso(T0) or ""]
    m.message("ping")
    m.now = T0 + timedelta(hours=1)
    m.message("poke")
    e = m.e("t")
    assert (e.side, e.side_at, e.side_held_by) == (["note"], T0 + timedelta(days=1), "budget")
    assert m.log[-1] == f"t: note held by the frequency budget until {iso(T0 + timedelta(days=1))}"
    m.message("hot")
    [task] = m.effects
    assert isinstance(task.payload, TaskPayload)
    assert (task.step, task.side, task.payload.priority, task.payload.due_at) == (
        "call", True, "high", T0 + timedelta(hours=3))
    assert (e.side, e.side_at, e.side_held_by) == (["note"], T0 + timedelta(days=1), "budget")
    m.at(days=1)
    assert [f.step for f in m.effects] == ["call", "note"]
    assert (e.side, e.side_at, e.side_held_by) == ([], None, "")


def test_a_retry_keeps_the_cursor_on_the_effect_until_its_time() -> None:
    m = Mini(journey("news", NEWS))
    m.take(m.engine.on_message(m.state, bus_message("m1", "l-1", "ping", lead=m.lead), T0))   # not driven
    e = m.e("news")
    out = Outcome()
    effect = m.engine.next_effect(m.state, "news", m.now, out)
    assert effect is not None and effect.step == "n1"
    token = e.token
    m.engine.retry_later(m.state, effect, m.now, timedelta(minutes=5), out, "messaging unavailable")
    assert (e.step, e.due, e.token) == ("n1", T0 + timedelta(minutes=5), token + 1)
    assert out.transitions[-1].summary == (
        f"news: n1 will be retried at {iso(T0 + timedelta(minutes=5))}: messaging unavailable")
    assert out.transitions[-1].type == "retry" and "news" in out.touched
    assert m.engine.next_effect(m.state, "news", T0 + timedelta(minutes=5, seconds=-1), out) is None
    again = m.engine.next_effect(m.state, "news", T0 + timedelta(minutes=5), out)
    assert again is not None and again.dedupe_key == effect.dedupe_key


@pytest.mark.parametrize(("etype", "props", "ended"), [
    ("unsubscribed", {}, {"nur"}),
    ("unsubscribed", {"scope": "nurture"}, {"nur"}),
    ("unsubscribed", {"scope": "transactional"}, {"tx"}),
    ("unsubscribed", {"scope": "all"}, {"nur", "tx"}),
    ("spam_reported", {}, {"nur"}),
    ("email_hard_bounced", {}, {"nur"}),
])
def test_an_opt_out_ends_the_journeys_of_the_mail_it_stops(etype: str, props: dict[str, Any],
                                                          ended: set[str]) -> None:
    nur = journey("nur", [{"id": "idle", "type": "listen"}], category="nurture")
    tx = journey("tx", [{"id": "idle", "type": "listen"}])
    m = Mini(nur, tx)
    m.message("ping")
    m.message(etype, **props)
    assert {k for k, e in m.state.enrollments.items() if e.status == EXITED} == ended
    scope = f" ({props['scope']})" if props.get("scope") else ""
    assert sorted(m.log[2:]) == sorted(f"{k}: exited: {etype}{scope}" for k in ended)
    assert all(m.e(k).outcome == etype for k in ended)


def test_withdrawn_consent_ends_nurture_and_given_again_resumes_where_it_stood() -> None:
    m = Mini(journey("news", [NEWS[0], {"id": "w", "type": "wait", "delay": "3d"}, *NEWS[1:]],
                     category="nurture", reentry="never"))
    m.message("ping")
    e = m.e("news")
    assert (e.step, e.due) == ("n2", T0 + timedelta(days=3))
    m.now = T0 + timedelta(days=1)
    m.lead["consent"] = {"email": False}
    m.message("page_viewed")
    assert (e.status, e.outcome) == (EXITED, "no_consent")
    assert m.log[-1] == "news: exited: no_consent"
    assert m.state.history["news"]["consent_exit"] == {"due": iso(T0 + timedelta(days=3)), "waiting": "delay",
                                                       "withdrawn": True, "reason": "no_consent", "scope": "nurture"}
    m.now = T0 + timedelta(days=2)
    m.lead["consent"] = {"email": True}
    token = e.token
    m.message("ping")
    assert (e.status, e.entry, e.step, e.due, e.waiting) == (ACTIVE, 1, "n2", T0 + timedelta(days=3), "delay")
    assert (e.token, e.outcome, e.ended_at) == (token + 1, None, None)
    assert m.record("news: re-entered")[:5] == ("resumed", None, "n2", None, "go")
    assert m.log[-1].startswith("news: re-entered after email consent was given again: ping type=ping matched "
                                "rule go; resuming at n2; next step at ")
    assert "consent_exit" not in m.state.history["news"] and "ended_at" not in m.state.history["news"]
    m.at(days=3)
    assert [f.dedupe_key for f in m.effects] == ["l-1:news:1:n1:1.1", "l-1:news:1:n2:1.1", "l-1:news:1:n3:1.1"]


def test_an_opt_out_alone_does_not_let_a_never_journey_be_entered_again() -> None:
    # Unsubscribed while consent still reads true: not a withdrawal, so `reentry: never` holds.
    m = Mini(journey("news", [{"id": "idle", "type": "listen"}], category="nurture"))
    m.message("ping")
    m.message("unsubscribed")
    assert m.state.history["news"]["consent_exit"]["withdrawn"] is False
    m.message("ping")
    assert m.e("news").status == EXITED


WEBINAR = dict(entity="webinar_id", anchors={"starts_at": "starts_at"}, reanchor_events=["moved"],
               enter_until={"anchor": "starts_at", "offset": "1d"})
REMIND = [{"id": "before", "type": "wait", "until": {"anchor": "starts_at", "offset": "-1d"}, "if_past": "late"},
          {"id": "remind", "type": "update", "set": {"r": 1}},
          {"id": "late", "type": "update", "set": {"r": 2}},
          {"id": "done", "type": "end"}]


def test_a_wait_until_an_anchor_and_its_move() -> None:
    m = Mini(journey("web", REMIND, **WEBINAR))
    starts = T0 + timedelta(days=5)
    m.message("ping", webinar_id="w1", starts_at=iso(starts))
    e = m.e("web#w1")
    assert (e.step, e.due, e.waiting, e.anchors) == ("remind", starts - timedelta(days=1), "until",
                                                     {"starts_at": iso(starts), "webinar_id": "w1"})
    m.now = T0 + timedelta(days=1)
    m.message("moved", webinar_id="w1", starts_at=iso(starts + timedelta(days=2)))
    assert e.due == starts + timedelta(days=1)
    assert m.log[-1] == (f"web: anchor moved (starts_at={iso(starts + timedelta(days=2))}): pending step at "
                         f"{iso(starts + timedelta(days=1))}")
    m.message("moved", webinar_id="w1", starts_at=iso(starts + timedelta(days=2)))   # the same: nothing
    m.message("moved", webinar_id="w2", starts_at=iso(starts))                        # another webinar
    assert e.due == starts + timedelta(days=1) and m.log[-1].startswith("web: anchor moved")
    assert len([x for x in m.log if "anchor moved" in x]) == 1
    assert m.record("web: anchor moved")[0] == "rescheduled"
    assert m.record("web: anchor moved")[5] == {"starts_at": iso(starts + timedelta(days=2))}
    m.at(days=6, seconds=-1)
    assert m.effects == []
    m.at(days=6)
    assert [f.payload for f in m.effects] == [UpdatePayload({"r": 1}), UpdatePayload({"r": 2})]


def test_a_wait_until_a_moment_already_past_takes_its_if_past_path() -> None:
    m = Mini(journey("web", REMIND, **WEBINAR))
    starts = T0 + timedelta(hours=12)
    m.message("ping", webinar_id="w1", starts_at=iso(starts))
    assert [f.payload for f in m.effects] == [UpdatePayload({"r": 2})]
    assert f"web: before already past ({iso(starts - timedelta(days=1))}): going to late" in m.log
    assert m.record("web: before already past")[:3] == ("skip", "before", "late")


@pytest.mark.parametrize(("started", "entered"), [(timedelta(days=1), True), (timedelta(days=1, seconds=1), False)])
def test_an_entry_after_its_enter_until_is_refused_and_explained(started: timedelta, entered: bool) -> None:
    m = Mini(journey("web", REMIND, **WEBINAR))
    starts = T0 - started
    m.message("ping", webinar_id="w1", starts_at=iso(starts))
    assert ("web#w1" in m.state.enrollments) is entered
    if not entered:
        assert m.log == [f"web: not entered: ping matched rule go but its enter_until starts_at +1d "
                         f"({iso(starts + timedelta(days=1))}) has passed"]
        assert m.types == ["skipped"]
        assert m.record("web: not entered") == ("skipped", None, None, None, "go", {
            "enter_until": iso(starts + timedelta(days=1)), "starts_at": iso(starts)})


@pytest.mark.parametrize(("late", "said"), [
    (timedelta(hours=30), "passed 30.0 h ago"), (timedelta(hours=47, minutes=54), "passed 47.9 h ago"),
    (timedelta(hours=30, minutes=33), "passed 30.6 h ago"),
    (timedelta(days=2), "passed 2.0 d ago"), (timedelta(days=3, hours=12), "passed 3.5 d ago")])
def test_a_step_run_later_than_its_skip_if_late_is_skipped_and_says_how_late(late: timedelta, said: str) -> None:
    steps = [{"id": "w", "type": "wait", "delay": "1d"},
             {"id": "note", "type": "update", "set": {"x": 1}, "skip_if_late": "1d"},
             {"id": "done", "type": "end"}]
    m = Mini(journey("late", steps))
    m.message("ping")
    m.at(days=2)                       # exactly its tolerance late: it still runs
    assert len(m.effects) == 1
    m2 = Mini(journey("late", steps))
    m2.message("ping")
    m2.now = T0 + timedelta(days=1) + late
    m2.drive()
    assert m2.effects == []
    reason = f"its time {iso(T0 + timedelta(days=1))} {said}, more than its skip_if_late 1d"
    assert f"late: note skipped: {reason}" in m2.log
    assert m2.record("late: note skipped") == ("skipped", "note", "done", None, None, {"reason": reason})
    [run] = [r for r in m2.runs if r.step == "note"]
    assert (run.status, run.detail, run.dedupe_key) == ("skipped", reason, "l-1:late:1:note:1.1")


def test_a_step_after_its_skip_after_is_skipped_and_says_why() -> None:
    steps = [{"id": "w", "type": "wait", "delay": "2d"},
             {"id": "note", "type": "update", "set": {"x": 1},
              "skip_after": {"fact": "lead.attributes.ends_at", "offset": "-1h"}},
             {"id": "done", "type": "end"}]
    m = Mini(journey("late", steps))
    m.lead.setdefault("attributes", {})["ends_at"] = iso(T0 + timedelta(days=2, hours=1))
    m.message("ping")
    m.at(days=2)                       # exactly at its skip_after: it still runs
    assert len(m.effects) == 1
    m2 = Mini(journey("late", steps))
    m2.lead.setdefault("attributes", {})["ends_at"] = iso(T0 + timedelta(days=2, minutes=59))
    m2.message("ping")
    m2.at(days=2)
    assert m2.effects == []
    deadline = iso(T0 + timedelta(days=1, hours=23, minutes=59))
    assert f"late: note skipped: past its skip_after lead.attributes.ends_at -1h ({deadline})" in m2.log


TRIAL = dict(anchors={"ends_at": "ends_at"}, reanchor_events=["extended"])
CAPPED = [{"id": "w", "type": "wait", "until": {"anchor": "entered_at", "offset": "7d"},
           "not_after": {"anchor": "ends_at", "offset": "-3d"}},
          {"id": "mid", "type": "update", "set": {"x": 1}, "skip_from": {"anchor": "ends_at", "offset": "-3d"}},
          {"id": "done", "type": "end"}]


@pytest.mark.parametrize(("length", "due", "ran"), [
    (timedelta(days=10, seconds=1), timedelta(days=7), True),     # its own time comes first: it runs
    (timedelta(days=10), timedelta(days=7), False),               # its own time is the cut-off: skipped
    (timedelta(days=7), timedelta(days=4), False)])               # capped at the cut-off: skipped there
def test_an_until_wait_ends_by_its_not_after_and_a_step_is_skipped_from_its_skip_from(
        length: timedelta, due: timedelta, ran: bool) -> None:
    m = Mini(journey("trial", CAPPED, **TRIAL))
    m.message("ping", ends_at=iso(T0 + length))
    e = m.e("trial")
    assert (e.step, e.due, e.waiting) == ("mid", T0 + due, "until")
    capped = [x for x in m.log if "ends at its not_after" in x]
    assert capped == ([] if due == timedelta(days=7) else [
        f"trial: w ends at its not_after ends_at -3d ({iso(T0 + due)}), before its own time entered_at +7d "
        f"({iso(T0 + timedelta(days=7))})"])
    m.at(days=due.days, seconds=-1)
    assert m.effects == []
    m.at(days=due.days)
    assert bool(m.effects) is ran
    if not ran:
        reason = f"at or after its skip_from ends_at -3d ({iso(T0 + length - timedelta(days=3))})"
        assert m.record("trial: mid skipped") == ("skipped", "mid", "done", None, None, {"reason": reason})
    assert e.status == "completed"


def test_a_moved_anchor_moves_a_wait_by_its_not_after_too() -> None:
    m = Mini(journey("trial", CAPPED, **TRIAL))
    m.message("ping", ends_at=iso(T0 + timedelta(days=7)))
    e = m.e("trial")
    assert e.due == T0 + timedelta(days=4)
    m.now = T0 + timedelta(days=1)
    m.message("extended", ends_at=iso(T0 + timedelta(days=14)))     # the wait's own time comes first now
    assert e.due == T0 + timedelta(days=7)
    m.message("extended", ends_at=iso(T0 + timedelta(days=8)))      # and the cut-off again
    assert e.due == T0 + timedelta(days=5)
    m.at(days=5)
    assert m.effects == [] and any(x.startswith("trial: mid skipped: at or after its skip_from") for x in m.log)


def test_branch_facts_see_the_days_in_the_journey_its_stage_and_the_other_journeys() -> None:
    steps = [{"id": "w", "type": "wait", "delay": "2d", "stage": "one"},
             {"id": "b", "type": "branch", "default": "no", "stage": "two", "rules": [
                 {"name": "all", "next": "yes", "when": {"all": [
                     {"fact": "journey.days_in_journey", "gte": 2}, {"fact": "journey.stage_index", "eq": 1},
                     {"fact": "journeys.other", "eq": "active"}, {"fact": "journey.key", "eq": "f"}]}}]},
             {"id": "yes", "type": "goal", "name": "yes"}, {"id": "no", "type": "end"}]
    other = journey("other", [{"id": "idle", "type": "listen"}])
    m = Mini(journey("f", steps, stages=STAGES), other)
    m.message("ping")
    m.at(days=2, seconds=-1)
    assert m.e("f").status == ACTIVE
    m.at(days=2)
    assert m.e("f").outcome == "yes"


def dated() -> Journey:
    return load({"key": "renew", "kind": "sequence", "category": "transactional",
                 "entry": [{"name": "soon", "date": {"fact": "lead.attributes.expires_at", "offset": "-30d"}}],
                 "steps": [{"id": "note", "type": "update", "set": {"r": 1}}, {"id": "done", "type": "end"}]},
                version=1)


def test_a_date_entry_is_armed_moved_and_fired_once_at_its_moment() -> None:
    m = Mini(dated())
    m.lead.setdefault("attributes", {})["expires_at"] = iso(T0 + timedelta(days=40))
    out = m.message("lead_updated")
    assert out.dates_changed == {"renew.soon"}
    assert m.state.dates["renew.soon"] == {"at": iso(T0 + timedelta(days=10)), "token": 1, "fired": False}
    assert m.message("lead_updated").dates_changed == set()          # the same date: nothing to re-arm
    m.lead.setdefault("attributes", {})["expires_at"] = iso(T0 + timedelta(days=41))
    assert m.message("lead_updated").dates_changed == {"renew.soon"}
    assert m.state.dates["renew.soon"] == {"at": iso(T0 + timedelta(days=11)), "token": 2, "fired": False}
    due = T0 + timedelta(days=11)
    assert m.engine.date_due(m.state, "renew.soon", 1, due).transitions == []       # an old timer
    assert m.engine.date_due(m.state, "renew.soon", 2, due - timedelta(seconds=1)).transitions == []
    assert m.engine.date_due(m.state, "renew.other", 2, due).transitions == []      # not armed
    fired = m.engine.date_due(m.state, "renew.soon", 2, due)
    assert [t.summary for t in fired.transitions] == [
        "renew: entered: date_reached date_rule=renew.soon type=date_reached matched rule soon"]
    assert m.state.dates["renew.soon"]["fired"] is True
    assert m.engine.date_due(m.state, "renew.soon", 2, due).transitions == []       # once


def test_a_date_that_is_not_a_time_arms_nothing() -> None:
    m = Mini(dated())
    m.lead.setdefault("attributes", {})["expires_at"] = "someday"
    assert m.message("lead_updated").dates_changed == set() and m.state.dates == {}


@pytest.mark.parametrize(("weights", "variant"), [((1, 1e-9), "A"), ((1e-9, 1), "B")])
def test_a_split_assigns_by_weight_and_says_which(weights: tuple[float, float], variant: str) -> None:
    steps = [{"id": "s", "type": "split", "variants": [
        {"name": "A", "weight": weights[0], "next": "a"}, {"name": "B", "weight": weights[1], "next": "b"}]},
        {"id": "a", "type": "update", "set": {"v": "A"}, "next": "done"},
        {"id": "b", "type": "update", "set": {"v": "B"}},
        {"id": "done", "type": "end"}]
    m = Mini(journey("ab", steps))
    m.message("ping")
    assert [f.payload for f in m.effects] == [UpdatePayload({"v": variant})]
    assert f"ab: split s assigned variant {variant}" in m.log
    assert m.record("ab: split s")[:5] == ("split", "s", variant.lower(), None, variant)


def test_an_email_engages_its_own_journey_once_per_message() -> None:
    one = journey("one", [{"id": "idle", "type": "listen"}])
    two = journey("two", [{"id": "idle", "type": "listen"}])
    m = Mini(one, two)
    m.message("ping")
    m.message("email_opened", journey="one", step="e1", message_id="m-1")
    m.message("email_clicked", journey="one", step="e1", message_id="m-1")    # the same email
    assert (m.e("one").engaged, m.e("two").engaged) == (1, 0)
    m.message("email_opened", journey="one", step="e2")                       # no id: journey.step
    m.message("email_opened", journey="one", step="e2")
    assert m.e("one").engaged_with == ["m-1", "one.e2"] and m.e("one").engaged == 2
    m.message("email_opened")                                                 # no journey: every one
    assert (m.e("one").engaged, m.e("two").engaged) == (3, 1)
    m.message("page_viewed")                                                  # not an email
    assert (m.e("one").engaged, m.e("two").engaged) == (3, 1)


def test_a_paused_enrolment_left_for_consent_resumes_with_its_time_left() -> None:
    low = journey("low", SLOW, category="nurture")
    high = journey("high", [{"id": "w", "type": "wait", "delay": "10d"}, {"id": "done", "type": "end"}],
                   events=("urgent",), pauses=["low"], category="transactional")
    m = Mini(high, low)
    m.message("ping")
    m.at(days=1)
    m.message("urgent")
    assert m.e("low").status == PAUSED
    m.now = T0 + timedelta(days=2)
    m.lead["consent"] = {"email": False}
    m.message("page_viewed")
    assert m.state.history["low"]["consent_exit"] == {"due": iso(T0 + timedelta(days=5)), "waiting": "delay",
                                                      "withdrawn": True, "reason": "no_consent", "scope": "nurture"}
    m.lead["consent"] = {"email": True}
    m.now = T0 + timedelta(days=3)
    m.message("ping")
    low_e = m.e("low")
    assert (low_e.status, low_e.paused_remaining) == (PAUSED, 2 * 86400.0)   # high still runs


def test_the_inactivity_clock_starts_at_what_was_heard_first_and_only_moves_forward() -> None:
    m = Mini(journey("flow", FLOW, stages=STAGES), settings=PlaybookSettings(inactivity_days=(3,)))
    heard = bus_message("m0", "l-1", "lead_created", lead=dict(m.lead), occurred_at=iso(T0 - timedelta(days=1)))
    m.engine.on_message(m.state, heard, T0)
    assert (m.state.last_engagement, m.state.inactive_due) == (T0 - timedelta(days=1), T0 + timedelta(days=2))
    future = bus_message("m1", "l-1", "page_viewed", occurred_at=iso(T0 + timedelta(days=9)))
    m.engine.on_message(m.state, future, T0)               # a clock ahead of ours: taken as now
    assert m.state.last_engagement == T0
    late = bus_message("m2", "l-1", "page_viewed", occurred_at=iso(T0 - timedelta(hours=5)))
    m.engine.on_message(m.state, late, T0 + timedelta(hours=1))   # an older engagement arriving late
    assert (m.state.last_engagement, m.state.inactive_due) == (T0, T0 + timedelta(days=3))


def test_a_message_without_a_lead_keeps_the_lead_as_it_was() -> None:
    m = Mini(journey("flow", FLOW, stages=STAGES))
    m.message("ping")
    assert m.state.lead["score"] == 10
    m.engine.on_message(m.state, bus_message("m9", "l-1", "page_viewed", lead={}), T0)
    m.engine.on_message(m.state, bus_message("m10", "l-1", "page_viewed"), T0)
    # the lead is kept as the typed snapshot holds it: every field, None (or empty) where scoring sent none
    assert m.state.lead == LeadSnapshot.from_dict({"id": "l-1", "score": 10, "consent": {"email": True}}).as_dict()


def quiet_clock() -> PlaybookSettings:
    from services.journeys.domain.definitions import Clock

    return PlaybookSettings(clocks=(Clock("no_opens", (3, 7), frozenset({"email_opened"}),
                                          frozenset({"email_sent"})),))


def test_a_quiet_clock_starts_once_restarts_on_its_reset_and_posts_each_threshold_once() -> None:
    quiet = journey("quiet", [{"id": "idle", "type": "listen"}], events=("no_opens",),
                    entry=[{"name": "week", "events": ["no_opens"],
                            "when": {"fact": "event.properties.days", "gte": 7}}])
    m = Mini(quiet, settings=quiet_clock())
    m.message("page_viewed")
    assert "~no_opens" not in m.state.dates                      # neither its start nor its reset
    out = m.message("email_sent")
    assert out.dates_changed == {"~no_opens"}
    assert m.state.dates["~no_opens"] == {"at": iso(T0 + timedelta(days=3)), "since": iso(T0), "step": 0,
                                          "fired": False, "token": 1}
    m.now = T0 + timedelta(hours=1)
    assert m.message("email_sent").dates_changed == set()        # running already: a second send does not restart it
    m.now = T0 + timedelta(days=1)
    m.message("email_opened")                                    # the reset: counted again from the open
    entry = m.state.dates["~no_opens"]
    assert (entry["at"], entry["since"], entry["token"]) == (iso(T0 + timedelta(days=4)),
                                                             iso(T0 + timedelta(days=1)), 2)
    redelivered = bus_message("again", "l-1", "email_opened", occurred_at=iso(T0 + timedelta(days=1)))
    assert m.engine.on_message(m.state, redelivered, T0 + timedelta(days=1)).dates_changed == set()
    first = T0 + timedelta(days=4)
    assert m.engine.date_due(m.state, "~no_opens", 1, first).transitions == []          # an old timer
    assert m.engine.date_due(m.state, "~no_opens", 2, first - timedelta(seconds=1)).transitions == []
    assert m.engine.date_due(m.state, "~other", 2, first).transitions == []
    out = m.engine.date_due(m.state, "~no_opens", 2, first)
    assert out.dates_changed == {"~no_opens"} and "quiet" not in m.state.enrollments      # 3 days: not 7
    assert m.state.dates["~no_opens"] == {"at": iso(T0 + timedelta(days=8)), "since": iso(T0 + timedelta(days=1)),
                                          "step": 1, "fired": False, "token": 3}
    out = m.engine.date_due(m.state, "~no_opens", 3, T0 + timedelta(days=8))
    assert [t.summary for t in out.transitions] == ["quiet: entered: no_opens days=7 matched rule week"]
    assert m.state.dates["~no_opens"]["fired"] is True and out.dates_changed == set()
    assert m.engine.date_due(m.state, "~no_opens", 3, T0 + timedelta(days=9)).transitions == []


def test_a_journey_resumed_after_consent_pauses_again_what_it_pauses() -> None:
    high = journey("high", [{"id": "idle", "type": "listen"}], category="nurture", pauses=["low"])
    low = journey("low", [{"id": "idle", "type": "listen"}], events=("late",))
    m = Mini(high, low)
    m.message("ping")
    m.message("late")
    assert m.e("low").status == PAUSED
    m.lead["consent"] = {"email": False}
    m.message("page_viewed")
    assert (m.e("high").status, m.e("low").status) == (EXITED, ACTIVE)     # its pauser left
    m.lead["consent"] = {"email": True}
    m.message("ping")
    assert (m.e("high").status, m.e("low").status) == (ACTIVE, PAUSED)
    assert m.log[-1] == "low: paused while high runs"


@pytest.mark.parametrize(("pauses", "paused"), [(["triggers"], True), (["always_on"], True), (["sequence"], False),
                                                (["rules"], True)])
def test_always_on_rule_tables_are_paused_only_by_their_mode_or_key(pauses: list[str], paused: bool) -> None:
    table = load({"key": "rules", "kind": "sequence", "mode": "always_on", "category": "transactional",
                  "entry": [{"name": "go", "events": ["ping"], "when": ANY}],
                  "steps": [{"id": "idle", "type": "listen"}]}, version=1)
    boss = journey("boss", [{"id": "idle", "type": "listen"}], events=("urgent",), pauses=pauses)
    m = Mini(boss, table)
    m.message("ping")
    m.message("urgent")
    assert m.e("rules").status == (PAUSED if paused else ACTIVE)


def test_a_jump_and_a_goal_without_a_name_say_where_and_which() -> None:
    steps = [{"id": "w", "type": "wait", "delay": "1h"}, {"id": "hop", "type": "jump", "to": "land"},
             {"id": "land", "type": "send", "subject": "S", "url": "https://example.com/x", "brief": ["b"]},
             {"id": "won", "type": "goal"}]
    m = Mini(journey("j", steps))
    m.message("ping")
    m.at(hours=1)
    assert m.record("j: jumped to land") == ("jump", "hop", "land", None, None, {})
    assert [t.at for t in m.transitions if t.type == "jump"] == [T0 + timedelta(hours=1)]
    [send] = m.effects
    assert isinstance(send.payload, SendPayload)
    assert send.payload.context == {"subject": "S", "url": "https://example.com/x", "brief": ["b"], "entered_by": "m1"}
    assert (m.e("j").status, m.e("j").outcome) == (COMPLETED, "won")
    assert "j: goal reached: won" in m.log


def test_a_first_entry_starts_its_timer_token_at_one() -> None:
    m = Mini(journey("l", [{"id": "idle", "type": "listen"}]))
    m.message("ping")
    assert m.e("l").token == 2          # 1 at entry, +1 when the listen step clears its timer
    assert m.state.history["l"] == {"entries": 1}


def test_a_journey_that_runs_off_its_last_step_completes() -> None:
    m = Mini(journey("off", [{"id": "last", "type": "update", "set": {"x": 1}}], name="Off The End"))
    m.message("ping")
    assert (m.e("off").status, m.e("off").outcome) == (COMPLETED, "end")
    assert m.log[-1] == "off: completed Off The End"


@pytest.mark.parametrize(("signals", "entered"), [(["hot", "x"], True), (["x"], False), (None, False)])
def test_entry_rules_see_the_messages_signals(signals: list[str] | None, entered: bool) -> None:
    j = journey("sig", [{"id": "idle", "type": "listen"}], entry=[
        {"name": "hot", "events": ["page_viewed"], "when": {"fact": "signals", "contains": "hot"}}])
    m = Mini(j)
    m.engine.on_message(m.state, bus_message("s1", "l-1", "page_viewed", lead=m.lead, signals=signals), T0)
    assert ("sig" in m.state.enrollments) is entered


def test_an_exit_moves_the_timer_token_by_one() -> None:
    m = Mini(journey("l", [{"id": "idle", "type": "listen"}]))
    m.message("ping")
    m.message("lead_erased")
    assert m.e("l").token == 3


@pytest.mark.parametrize(("late", "said"), [(timedelta(hours=2), "lead.attributes.ends_at +0")])
def test_a_skip_after_without_an_offset_says_plus_nothing(late: timedelta, said: str) -> None:
    steps = [{"id": "w", "type": "wait", "delay": "2d"},
             {"id": "note", "type": "update", "set": {"x": 1}, "skip_after": {"fact": "lead.attributes.ends_at"}},
             {"id": "done", "type": "end"}]
    m = Mini(journey("late", steps))
    m.lead.setdefault("attributes", {})["ends_at"] = iso(T0 + timedelta(days=2) - late)
    m.message("ping")
    m.at(days=2)
    assert f"late: note skipped: past its skip_after {said} ({iso(T0 + timedelta(days=2) - late)})" in m.log


def test_migrating_an_event_wait_to_an_event_wait_keeps_waiting() -> None:
    v1 = journey("ask", EVENT_WAIT, entity="case_id")
    v2 = journey("ask", EVENT_WAIT, entity="case_id", version=2)
    m = Mini(v1)
    m.message("ping", case_id="c1")
    e = m.e("ask#c1")
    assert migrate(m.state, e, v2, {}, T0 + timedelta(hours=2), Outcome()) == "ask"
    assert (e.waiting, e.due, e.version) == ("event", T0 + timedelta(days=1), 2)


def test_a_webhook_step_is_a_send_on_the_webhook_channel() -> None:
    m = Mini(journey("hook", [{"id": "call", "type": "webhook", "url": "https://example.com/h"},
                              {"id": "sms", "type": "send", "channel": "sms"}, {"id": "done", "type": "end"}]))
    m.message("ping")
    sends = [f.payload for f in m.effects if isinstance(f.payload, SendPayload)]
    assert len(sends) == len(m.effects)
    assert [(f.kind, p.channel, p.context.get("url")) for f, p in zip(m.effects, sends, strict=True)] == [
        ("send", "webhook", "https://example.com/h"), ("send", "sms", None)]


def test_an_enrolment_remembers_the_last_hundred_emails_it_engaged_with() -> None:
    m = Mini(journey("one", [{"id": "idle", "type": "listen"}]))
    m.message("ping")
    e = m.e("one")
    for n in range(1, 102):
        m.engine.on_message(m.state, bus_message(f"o{n}", "l-1", "email_opened",
                                                 properties={"journey": "one", "message_id": f"m{n}"}), T0)
    assert e.engaged == 101 and len(e.engaged_with) == 100 and e.engaged_with[0] == "m2"
    m.engine.on_message(m.state, bus_message("again", "l-1", "email_opened",
                                             properties={"journey": "one", "message_id": "m2"}), T0)
    assert e.engaged == 101


def test_triggers_record_their_time_and_kind() -> None:
    j = journey("g", GOTO, stages=[{"id": "one", "name": "Stage One"}, {"id": "two", "name": "Stage Two"}],
                triggers=[{"name": "jump", "events": ["poke"], "when": ANY, "do": {"goto": "c", "update": "b"}}])
    m = Mini(j)
    m.message("ping")
    m.now = T0 + timedelta(hours=1)
    m.message("poke")
    assert m.record("g: jumped to two stage")[:3] == ("jump", "b", "c")   # the cursor sat after the wait
    assert [(t.type, t.at) for t in m.transitions if t.summary.startswith(("g: jumped", "g: queued"))] == [
        ("jump", T0 + timedelta(hours=1)), ("trigger", T0 + timedelta(hours=1))]
    assert m.record("g: queued b")[2] == "b"


def test_each_branch_step_decides_by_its_own_rules() -> None:
    steps = [{"id": "first", "type": "branch", "default": "second",
              "rules": [{"name": "never", "when": {"fact": "lead.score", "gte": 1000}, "next": "lost"}]},
             {"id": "second", "type": "branch", "default": "lost",
              "rules": [{"name": "always", "when": {"fact": "lead.score", "gte": 0}, "next": "won"}]},
             {"id": "won", "type": "goal", "name": "won"}, {"id": "lost", "type": "end"}]
    m = Mini(journey("two", steps))
    m.message("ping")
    assert m.e("two").outcome == "won"


def test_a_paused_enrolment_does_not_take_the_event_it_waits_for() -> None:
    high = journey("high", [{"id": "w", "type": "wait", "delay": "2d"}, {"id": "done", "type": "end"}],
                   events=("urgent",), pauses=["ask"])
    m = Mini(high, journey("ask", EVENT_WAIT, entity="case_id"))
    m.message("ping", case_id="c1")
    m.message("urgent")
    assert m.e("ask#c1").status == PAUSED
    m.message("answer", case_id="c1")
    assert m.effects == [] and m.e("ask#c1").step == "ask"


def test_an_ended_pauser_resumes_every_enrolment_it_alone_paused() -> None:
    one = journey("one", [{"id": "w", "type": "wait", "delay": "1d"}, {"id": "done", "type": "end"}],
                  events=("go1",), pauses=["low1", "low2"])
    two = journey("two", [{"id": "w", "type": "wait", "delay": "5d"}, {"id": "done", "type": "end"}],
                  events=("go2",), pauses=["low1"])
    low1 = journey("low1", [{"id": "idle", "type": "listen"}], events=("l1",))
    low2 = journey("low2", [{"id": "idle", "type": "listen"}], events=("l2",))
    m = Mini(one, two, low1, low2)
    m.message("l1")
    m.message("l2")
    m.message("go1")
    m.message("go2")
    assert (m.e("low1").status, m.e("low2").status) == (PAUSED, PAUSED)
    m.at(days=1)                       # one ends: low2 resumes, low1 stays paused by two
    assert (m.e("low1").status, m.e("low2").status) == (PAUSED, ACTIVE)


def test_a_wait_until_a_fact_that_is_not_there_does_not_wait() -> None:
    steps = [{"id": "w", "type": "wait", "until": {"fact": "lead.meta.when"}},
             {"id": "go", "type": "update", "set": {"x": 1}}, {"id": "done", "type": "end"}]
    m = Mini(journey("f", steps))
    m.lead["meta"] = "not a mapping"
    m.message("ping")
    assert [f.step for f in m.effects] == ["go"]


def test_a_date_entry_fired_is_not_fired_again() -> None:
    doc = {"key": "renew", "kind": "sequence", "category": "transactional", "reentry": "always",
           "entry": [{"name": "soon", "date": {"fact": "lead.attributes.expires_at", "offset": "-30d"}}],
           "steps": [{"id": "note", "type": "update", "set": {"r": 1}}, {"id": "done", "type": "end"}]}
    m = Mini(load(doc, version=1))
    m.lead.setdefault("attributes", {})["expires_at"] = iso(T0 + timedelta(days=40))
    m.message("lead_updated")
    token = m.state.dates["renew.soon"]["token"]
    m.engine.date_due(m.state, "renew.soon", token, T0 + timedelta(days=10))
    m.now = T0 + timedelta(days=10)
    m.drive()
    assert m.e("renew").status == COMPLETED
    assert m.engine.date_due(m.state, "renew.soon", token, T0 + timedelta(days=11)).transitions == []
    assert m.e("renew").entry == 1


def test_a_retry_names_the_step_it_retries() -> None:
    m = Mini(journey("news", NEWS))
    m.take(m.engine.on_message(m.state, bus_message("m1", "l-1", "ping", lead=m.lead), T0))
    out = Outcome()
    effect = m.engine.next_effect(m.state, "news", T0, out)
    assert effect is not None
    m.engine.retry_later(m.state, effect, T0, timedelta(minutes=1), out, "down")
    assert (out.transitions[-1].type, out.transitions[-1].step_to) == ("retry", "n1")


def test_entry_exit_and_trigger_rules_get_each_top_level_fact_they_read() -> None:
    """Rule sets are handed only the top-level facts they read (rulesets.EventRules): the other live journeys,
    this journey, the signals and the event each reach the entry, trigger and exit rules reading them."""
    from services.journeys.domain import rulesets

    other = journey("other", [{"id": "idle", "type": "listen"}])
    follower = journey(
        "follower", [{"id": "idle", "type": "listen", "stage": "one"},
                     {"id": "note", "type": "task", "kind": "follow_up", "title": "Nudged"}], stages=STAGES,
        entry=[{"name": "after_other", "events": ["pong"], "when": {"all": [
            {"fact": "journeys.other", "eq": "active"}, {"fact": "signals", "contains": "hot"}]}}],
        triggers=[{"name": "nudge", "events": ["poke"], "when": {"all": [
            {"fact": "journey.stage_index", "eq": 0}, {"fact": "journeys.other", "eq": "active"}]},
            "do": {"task": "note"}}],
        exit=[{"name": "bye", "events": ["leave"], "when": {"fact": "event.properties.why", "eq": "done"}}])
    assert rulesets.for_event(follower, "pong").entry_roots == {"journeys", "signals"}
    assert rulesets.for_event(follower, "poke").enrolled_roots == {"journey", "journeys"}
    assert rulesets.for_event(follower, "leave").enrolled_roots == {"event"}
    ping = rulesets.for_event(follower, "ping")
    assert (ping.entry, ping.enrolled, ping.enrolled_roots) == (None, False, frozenset())
    m = Mini(other, follower)
    m.message("pong")
    assert "follower" not in m.state.enrollments       # not in `other` yet, and no signal
    m.message("ping")
    m.n += 1
    cold = bus_message(f"m{m.n}", "l-1", "pong", lead=dict(m.lead), occurred_at=iso(m.now), signals=["cold"])
    m.take(m.engine.on_message(m.state, cold, m.now))
    assert "follower" not in m.state.enrollments
    hot = bus_message(f"m{m.n}b", "l-1", "pong", lead=dict(m.lead), occurred_at=iso(m.now), signals=["hot"])
    m.take(m.engine.on_message(m.state, hot, m.now))
    m.drive()
    assert m.e("follower").status == ACTIVE
    m.message("poke")
    assert [f.step for f in m.effects] == ["note"]
    m.message("leave", why="not yet")
    assert m.e("follower").status == ACTIVE
    m.message("leave", why="done")
    assert (m.e("follower").status, m.e("follower").outcome) == (EXITED, "bye")


def test_retries_in_a_row_back_off_to_an_hour_and_start_again_after_a_step_is_performed() -> None:
    """A service away for hours: each try in a row waits twice the one before, up to an hour (a few
    tries and timeline lines a lead, not one a minute); a performed step starts the count again."""
    m = Mini(journey("news", NEWS))
    m.take(m.engine.on_message(m.state, bus_message("m1", "l-1", "ping", lead=m.lead), T0))
    e = m.e("news")
    at, waits = T0, []
    for _ in range(9):
        out = Outcome()
        effect = m.engine.next_effect(m.state, "news", at, out)
        assert effect is not None and effect.step == "n1"
        m.engine.retry_later(m.state, effect, at, timedelta(minutes=1), out, "down")
        assert e.due is not None
        waits.append(int((e.due - at).total_seconds() // 60))
        at = e.due
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert e.to_json()["retries"] == 9 and Enrollment.from_json(e.to_json()).retries == 9
    out = Outcome()
    effect = m.engine.next_effect(m.state, "news", at, out)
    assert effect is not None
    m.engine.complete(m.state, effect, at, out, status="sent", message_id="m-1")
    assert e.retries == 0 and "retries" not in e.to_json()   # stored only while a service is away


def test_a_stored_loop_whose_wait_takes_no_time_is_stopped_after_the_cap_with_the_reason() -> None:
    """A loop whose only wait takes no time is refused when a definition is stored now, but a version
    stored before that check still loads: it sent its transactional email forever at one instant (each
    next_effect call ran a few steps and returned the send). Stopped at MAX_INSTANT_STEPS steps."""
    from services.journeys.domain.engine import MAX_INSTANT_STEPS

    loop = journey("loop", [{"id": "email_01", "type": "send"}, {"id": "w", "type": "wait", "delay": "0s"},
                            {"id": "again", "type": "jump", "to": "email_01"}])
    m = Mini(loop)
    m.n += 1
    m.take(m.engine.on_message(m.state, bus_message("m1", "l-1", "ping", lead=dict(m.lead),
                                                    occurred_at=iso(m.now)), m.now))
    out = Outcome()
    while (effect := m.engine.next_effect(m.state, "loop", m.now, out, side=False)) is not None:
        m.effects.append(effect)
        assert len(m.effects) <= MAX_INSTANT_STEPS, "the loop was never stopped"
        m.engine.complete(m.state, effect, m.now, out, status="sent")
    m.take(out)
    e = m.e("loop")
    assert (e.status, e.outcome, e.due) == (EXITED, "instant_loop", None)
    # Three steps a round: a send every third step, none past the cap.
    assert len(m.effects) == MAX_INSTANT_STEPS // 3 + (MAX_INSTANT_STEPS % 3 > 0)
    said = f"loop: stopped: {MAX_INSTANT_STEPS} steps at one instant (a loop without a wait)"
    assert said in m.log, m.log[-3:]
    assert m.types[-1] == "exited"
    # Nothing more, later either.
    m.at(days=1)
    assert m.engine.next_effect(m.state, "loop", m.now, Outcome()) is None


def test_many_steps_at_one_instant_are_counted_again_at_the_next() -> None:
    """The cap is per instant: a long flow that runs part of its steps now and the rest later is not stopped."""
    from services.journeys.domain.engine import MAX_INSTANT_STEPS

    steps: list[dict[str, Any]] = []
    per = MAX_INSTANT_STEPS // 2 - 100   # a round's steps, under the cap; three rounds are over it
    for i in range(3):
        steps += [{"id": f"j{i}_{k}", "type": "jump", "to": f"j{i}_{k + 1}"} for k in range(per)]
        steps += [{"id": f"j{i}_{per}", "type": "wait", "delay": "1h"}]
    steps.append({"id": "hello", "type": "send"})
    m = Mini(journey("long", steps))
    m.message("ping")
    m.at(hours=1)
    m.at(hours=2)
    m.at(hours=3)
    assert 3 * per > MAX_INSTANT_STEPS
    assert [f.step for f in m.effects] == ["hello"] and m.e("long").status == COMPLETED
