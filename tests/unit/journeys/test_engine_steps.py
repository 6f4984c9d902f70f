"""The engine's step semantics on small journeys written for the test (not the playbook), so every
explanation, time and payload can be written out: waits at their exact moment, branches at their
boundary, re-entry after exactly its delay, triggers once / after their cooldown / changing the pace,
event waits and their timeouts, pauses that keep the time left, enrol and exit steps, erasure,
playbook-wide exits, the inactivity thresholds and version migration."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from nurture.clock import VIRTUAL_EPOCH
from services.journeys.definitions import GlobalExit, Journey, PlaybookSettings, load
from services.journeys.engine import Engine, UnknownJourney, migrate
from services.journeys.model import ACTIVE, COMPLETED, EXITED, PAUSED, Effect, LeadState, Outcome, iso
from tests.bus_messages import bus_message

T0 = VIRTUAL_EPOCH
ANY = {"fact": "event.type", "exists": True}


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
        self.effects: list[Effect] = []
        self.answer = "sent"
        self.n = 0

    def take(self, out: Outcome) -> Outcome:
        self.log += [t.summary for t in out.transitions]
        self.types += [t.type for t in out.transitions]
        return out

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
    assert send.payload == {"template": "flow.hello", "channel": "email", "category": "transactional",
                            "journey": "flow", "version": 1, "step": "hello",
                            "context": {"subject": "Hi", "cta": "Go", "stage": "one"}}
    e = m.e("flow")
    assert (e.status, e.step, e.due, e.waiting, e.stage, e.last_sent) == (
        ACTIVE, "check", T0 + timedelta(days=2), "delay", "one", "hello")
    m.at(days=2, seconds=-1)
    assert len(m.effects) == 1
    m.at(days=2)
    [_, task] = m.effects
    assert (task.kind, task.step, task.dedupe_key) == ("task", "bye", "l-1:flow:1:bye:1.1")
    assert task.payload == {"kind": "follow_up", "title": "Call", "priority": "normal",
                            "due_at": T0 + timedelta(days=3),
                            "details": {"journey": "flow", "step": "bye", "stage": "two", "score": 10}}
    assert (e.status, e.outcome, e.ended_at, e.step, e.due) == (COMPLETED, "end", T0 + timedelta(days=2), "done", None)
    assert m.log == ["flow: entered: ping type=ping matched rule go", "flow: entered Stage One stage",
                     "flow: branch check took the default bye: no rule matched",
                     "flow: entered Stage Two stage after 48.0 h in one", "flow: completed The Flow"]
    assert m.types == ["entered", "stage", "branch", "stage", "completed"]
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
    m.message("ping")
    e = m.e("flow")
    if entered:
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
    assert (update.kind, update.step, update.payload, update.dedupe_key) == (
        "update", "no", {"set": {"answered": False}}, "l-1:ask:1:no:1.1")
    assert m.log == ["ask: entered: ping type=ping matched rule go",
                     f"ask: waiting at ask for answer until {iso(T0 + timedelta(days=1))}",
                     "ask: no answer by the timeout of ask: going to no", "ask: completed ask"]
    assert m.types == ["entered", "wait", "timeout", "completed"]


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
        assert update.payload == {"set": {"answered": True}}
        assert "ask: answer arrived at ask: going to yes" in m.log
        assert m.e("ask#c1").status == COMPLETED
    else:
        assert m.effects == [] and m.e("ask#c1").waiting == "event"
        m.at(days=1)
        assert [f.payload for f in m.effects] == [{"set": {"answered": False}}]


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
