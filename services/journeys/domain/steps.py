"""A journey's parts as typed records: one class per step type, the time specs, event waits, branch
rules, split variants and trigger actions.

`definitions.load` reads a document once into these (the only module that reads the raw document);
the engine, "why not", the simulator and the benches read their fields. `build_step` never fails: it
takes what is there, and `definitions` lists every problem of the same document beside it, so a
partly broken definition still yields a journey for the cross checks (unknown journeys, missing
templates) and is refused with all of its problems at once. The stored document stays as it was
written (`Journey.document`), so versions read back from SQL and definitions returned by the API are
the same JSON as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from nurture.jsontypes import JsonMapping, JsonValue

# Steps that run an effect in another service (and may be skipped when late).
EFFECT_TYPES = ("send", "task", "webhook", "update")


def spec_text(spec: JsonMapping) -> str:
    """`starts_at +1d`-style text of a time spec, for explanations."""
    base = spec.get("anchor") or spec.get("fact") or ("now" if "delay" in spec else "?")
    offset = spec.get("offset", spec.get("delay", 0))
    return f"{base} {offset if str(offset).startswith(('-', '+')) else f'+{offset}'}"


@dataclass(frozen=True, slots=True)
class TimeSpec:
    """A moment: `delay` from now (scaled by the enrolment's pace), or an anchor captured at entry
    (`entered_at` included) or a lead date property (`lead.*`), each plus `offset`."""

    delay: timedelta | None
    anchor: str | None
    fact: str | None
    offset: timedelta
    text: str  # as written, for explanations: `starts_at +1d`


@dataclass(frozen=True, slots=True)
class EventWait:
    """What an event wait waits for: one of `types`, about this enrolment's entity when `match` names
    an event property, and holding `when` (a condition in nurture.rules' grammar) when given."""

    types: tuple[str, ...]
    match: str | None
    when: JsonMapping | None


@dataclass(frozen=True, slots=True)
class BranchRule:
    name: str
    when: JsonMapping
    next: str | None


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    weight: float
    next: str | None


@dataclass(frozen=True, slots=True)
class TriggerAction:
    """A trigger's `do`: step ids (goto, send, task, update), journey keys (enrol, exit), a pace."""

    goto: str | None = None
    send: str | None = None
    task: str | None = None
    update: str | None = None
    enrol: str | None = None
    exit: str | None = None
    pace: float | None = None
    # `anchor: true`: the enrolment takes its anchors (the journey's `anchors`) from this event before the
    # side steps go, so they and the steps still to come name what the event names (a second download).
    anchor: bool = False

    def queued(self) -> list[str]:
        """Side steps queued, in the engine's order: send, task, update."""
        return [x for x in (self.send, self.task, self.update) if x is not None]


@dataclass(frozen=True, slots=True)
class Step:
    """A step of any type: where it goes next when it falls through, and its stage."""

    id: str
    type: str
    next: str | None
    stage: str | None


@dataclass(frozen=True, slots=True)
class EffectStep(Step):
    """send, webhook, task, update: skipped (and explained) when `skip_if_late` past the time its wait
    set, after `skip_after`, or at or after `skip_from` (a step that must come before another moment,
    e.g. a mid-trial email before the trial's ending reminder)."""

    skip_if_late: timedelta | None
    skip_if_late_text: str
    skip_after: TimeSpec | None
    skip_from: TimeSpec | None


@dataclass(frozen=True, slots=True)
class SendStep(EffectStep):
    """A message (email, sms, in_app, ads_audience) or, as type `webhook`, a call out."""

    template: str | None  # the template key when the step names one (else `<journey>.<step id>`)
    channel: str
    category: str  # the journey's category unless the step says otherwise
    subject: JsonValue
    cta: JsonValue
    brief: JsonValue
    url: JsonValue
    # `budget: exempt`: a nurture send timed to the hour (a cart reminder) goes past the per-lead frequency
    # budget instead of waiting for a slot; it still counts in the budget, so other nurture mail waits.
    budget_exempt: bool = False


@dataclass(frozen=True, slots=True)
class TaskStep(EffectStep):
    kind: JsonValue
    title: JsonValue
    priority: JsonValue
    due: timedelta


@dataclass(frozen=True, slots=True)
class UpdateStep(EffectStep):
    set: JsonMapping


@dataclass(frozen=True, slots=True)
class WaitStep(Step):
    """One of: `delay`, `until` a moment, or an `event` with a `timeout`. An `until` wait may say
    `not_after` (a moment): it then ends at the earlier of the two."""

    delay: timedelta | None
    until: TimeSpec | None
    event: EventWait | None
    timeout: TimeSpec | None
    on_event: str | None
    on_timeout: str | None
    if_past: str | None
    not_after: TimeSpec | None = None


@dataclass(frozen=True, slots=True)
class BranchStep(Step):
    rules: tuple[BranchRule, ...]
    default: str | None


@dataclass(frozen=True, slots=True)
class SplitStep(Step):
    variants: tuple[Variant, ...]


@dataclass(frozen=True, slots=True)
class GoalStep(Step):
    name: str


@dataclass(frozen=True, slots=True)
class JumpStep(Step):
    to: str | None


@dataclass(frozen=True, slots=True)
class JourneyStep(Step):
    """enrol or exit: the other journey's key."""

    journey: str | None


# -- building (lenient: the validator in definitions lists what is wrong) -----------------------------

def _text(value: JsonValue) -> str | None:
    return None if value is None else str(value)


def _duration(value: JsonValue, parse: Callable[[JsonValue], timedelta]) -> timedelta | None:
    try:
        return parse(value)
    except (ValueError, TypeError):
        return None


def time_spec(value: JsonValue, parse: Callable[[JsonValue], timedelta]) -> TimeSpec | None:
    """A time spec mapping, or None when it is not one (the validator says why)."""
    if not isinstance(value, Mapping):
        return None
    delay = _duration(value["delay"], parse) if "delay" in value else None
    return TimeSpec(delay=delay, anchor=_text(value.get("anchor")) if "anchor" in value else None,
                    fact=_text(value.get("fact")) if "fact" in value else None,
                    offset=_duration(value.get("offset", 0), parse) or timedelta(0), text=spec_text(value))


def trigger_action(value: JsonValue) -> TriggerAction:
    if not isinstance(value, Mapping):
        return TriggerAction()
    pace = value.get("pace")
    return TriggerAction(goto=_text(value.get("goto")), send=_text(value.get("send")), task=_text(value.get("task")),
                         update=_text(value.get("update")), enrol=_text(value.get("enrol")),
                         exit=_text(value.get("exit")),
                         pace=float(pace) if isinstance(pace, int | float) else None,
                         anchor=value.get("anchor") is True)


def build_step(raw: JsonMapping, *, sid: str, stype: str, nxt: str | None, stage: str | None, category: str,
               parse: Callable[[JsonValue], timedelta]) -> Step:
    """The typed step of one raw step mapping (`parse` reads a duration; passed in to keep one parser)."""
    if stype in ("send", "webhook", "task", "update"):
        return _effect_step(raw, sid=sid, stype=stype, nxt=nxt, stage=stage, category=category, parse=parse)
    if stype == "wait":
        delay = raw.get("delay")
        event = raw.get("event")
        wait_event = None
        if isinstance(event, Mapping):
            types = event.get("types")
            when = event.get("when")
            wait_event = EventWait(types=tuple(str(t) for t in types) if isinstance(types, list) else (),
                                   match=_text(event.get("match")), when=when if isinstance(when, Mapping) else None)
        elif event is not None:
            wait_event = EventWait(types=(), match=None, when=None)
        return WaitStep(sid, stype, nxt, stage, delay=_duration(delay, parse) if delay is not None else None,
                        until=time_spec(raw.get("until"), parse), event=wait_event,
                        timeout=time_spec(raw.get("timeout"), parse), on_event=_text(raw.get("on_event")),
                        on_timeout=_text(raw.get("on_timeout")), if_past=_text(raw.get("if_past")),
                        not_after=time_spec(raw.get("not_after"), parse))
    if stype == "branch":
        rules = raw.get("rules")
        return BranchStep(sid, stype, nxt, stage, rules=tuple(
            BranchRule(name=str(r.get("name")), when=_mapping(r.get("when")), next=_text(r.get("next")))
            for r in (rules if isinstance(rules, list) else []) if isinstance(r, Mapping)),
            default=_text(raw.get("default")))
    if stype == "split":
        variants = raw.get("variants")
        return SplitStep(sid, stype, nxt, stage, variants=tuple(
            Variant(name=str(v.get("name")), weight=_weight(v.get("weight")), next=_text(v.get("next")))
            for v in (variants if isinstance(variants, list) else []) if isinstance(v, Mapping)))
    if stype == "goal":
        return GoalStep(sid, stype, nxt, stage, name=str(raw.get("name", sid)))
    if stype == "jump":
        return JumpStep(sid, stype, nxt, stage, to=_text(raw.get("to")))
    if stype in ("enrol", "exit"):
        return JourneyStep(sid, stype, nxt, stage, journey=_text(raw.get("journey")))
    return Step(sid, stype, nxt, stage)


def _effect_step(raw: JsonMapping, *, sid: str, stype: str, nxt: str | None, stage: str | None, category: str,
                 parse: Callable[[JsonValue], timedelta]) -> EffectStep:
    late = raw.get("skip_if_late")
    skip_if_late = _duration(late, parse) if late is not None else None
    skip_after = time_spec(raw.get("skip_after"), parse)
    skip_from = time_spec(raw.get("skip_from"), parse)
    if stype in ("send", "webhook"):
        template = raw.get("template")
        return SendStep(sid, stype, nxt, stage, skip_if_late, str(late), skip_after, skip_from,
                        template=str(template) if template else None,
                        channel="webhook" if stype == "webhook" else str(raw.get("channel", "email")),
                        category=str(raw.get("category", category)), subject=raw.get("subject"),
                        cta=raw.get("cta"), brief=raw.get("brief"), url=raw.get("url"),
                        budget_exempt=raw.get("budget") == "exempt")
    if stype == "task":
        return TaskStep(sid, stype, nxt, stage, skip_if_late, str(late), skip_after, skip_from, kind=raw.get("kind"),
                        title=raw.get("title"), priority=raw.get("priority", "normal"),
                        due=_duration(raw.get("due", "1d"), parse) or timedelta(days=1))
    return UpdateStep(sid, stype, nxt, stage, skip_if_late, str(late), skip_after, skip_from,
                      set=_mapping(raw.get("set")))


def _mapping(value: JsonValue) -> JsonMapping:
    return value if isinstance(value, Mapping) else {}


def _weight(value: JsonValue) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
