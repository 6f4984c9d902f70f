"""Journey definitions: the playbook as data, loaded into typed objects and validated.

A definition is a YAML/JSON document (see services/journeys/data/playbook/*.yaml):

    key, name, kind (segment | engagement | sequence: the kinds API.md lists), mode (flow | always_on:
    always_on for rule tables every lead listens to, such as the behavioral triggers; the legacy
    `kind: triggers` loads as kind sequence, mode always_on), priority, category (nurture |
    transactional), reentry (never | always | {after: <duration>}), pauses ([kinds, modes or keys]: the
    lead's enrolments of those are paused while this one runs; one with a step due already, e.g. its
    immediate welcome, runs the steps due then pauses at its next wait),
    entity (event property keying one enrolment per entity, e.g. webinar_id), anchors ({name: event
    property captured at entry, e.g. starts_at}), reanchor_events, stages [{id, name}],
    entry [{name, events, when, reentry?}] (a rule's own reentry, e.g. `always` for a download while the
    journey re-enters tool users only after 30 days), enter_until (a time spec, e.g. {anchor: starts_at, offset: 1d}: an
    entry after it is refused and explained), exit [{name, events, when, outcome: goal | exit}],
    triggers [{name, events, when, do: {goto | send | enrol | exit | task | update | pace | anchor}, once, cooldown,
    on_entry, why}] (anchor: true takes the journey's anchors from the event, e.g. a second resource downloaded;
    on_entry: true, for a rule whose condition is the lead's state such as an urgent timeline, also holds on
    the event that enrolled the lead, checked once the entry's steps due at once have run: a rule about
    another event, e.g. a second download, leaves it out),
    steps [{id, type, ...}]

Step types: send, wait, branch, split, goal, jump, enrol, exit, update, task, webhook, listen, end.
Steps fall through to the next one in the list unless they say `next` (or end the path).
A wait for an event says `event: {types, match?, when?}`: `match` names an event property that must
be this enrolment's entity, `when` a condition the event must hold (e.g. a purchase, not a signup).
A send step may say `budget: exempt` (a nurture send timed to the hour goes past the per-lead frequency
budget; it still counts in it). Effect steps may say `skip_if_late: <duration>` (skipped, and explained,
when they come to run longer than that after the time their wait set, e.g. a reminder whose moment
passed), `skip_after: <time spec>` (skipped after that time) and `skip_from: <time spec>` (skipped at or
after that time). An until wait may say `not_after: <time spec>`: it ends at the earlier of the two (a
mid-trial email's wait and `skip_from` at the trial's ending reminder: a short trial skips it).
Conditions use the rule language of nurture.rules. `validate` lists every problem it finds; nothing
here touches the network, so the unit tests load the whole playbook.
This module and `steps` are the only readers of the raw document: steps become the typed records of
`steps` (one class per type), rules get a typed `TriggerAction` and `TimeSpec`; `Journey.document`
keeps the document as written, which is what SQL stores and the API returns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field

from nurture.busmessage import LeadSnapshot
from nurture.datafiles import DataFileError, Strict, read_yaml
from nurture.datafiles import validate as validate_file
from nurture.jsontypes import JsonMapping, JsonObject, JsonValue
from nurture.rules import validate_condition
from services.journeys.domain.steps import (
    EFFECT_TYPES,
    BranchStep,
    JourneyStep,
    JumpStep,
    SendStep,
    SplitStep,
    Step,
    TimeSpec,
    TriggerAction,
    WaitStep,
    build_step,
    time_spec,
    trigger_action,
)

PLAYBOOK_DIR = Path(__file__).parents[1] / "data" / "playbook"
KINDS = ("segment", "engagement", "sequence")
MODES = ("flow", "always_on")
# Older stored versions said `kind: triggers`; they keep loading as what that meant.
LEGACY_KINDS = {"triggers": ("sequence", "always_on")}
STEP_TYPES = ("send", "wait", "branch", "split", "goal", "jump", "enrol", "exit", "update", "task", "webhook",
              "listen", "end")
# Steps that never fall through to the next one.
TERMINAL = ("end", "goal", "jump", "listen")
CHANNELS = ("email", "sms", "in_app", "webhook", "ads_audience")
TASK_KINDS = ("sales_alert", "follow_up", "consultation", "notify")
ACTIONS = ("goto", "send", "enrol", "exit", "task", "update", "pace", "anchor")
SYNTHETIC_EVENTS = ("inactivity",)
# Lead-level timers of the clocks in _settings.yaml live beside date-relative entries (`state.dates`),
# under keys no journey can have ("<journey>.<rule>" keys start with a letter).
CLOCK_PREFIX = "~"
EVENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")   # an event type, as scoring accepts one
# The facts a journey's conditions read (Engine.facts): the lead's snapshot, the event's type and
# properties, its signals, the lead's live journeys and, inside a journey, these of its enrolment. A fact
# outside them is never there, so a rule on it never holds and nothing said why: `leed.segment` or
# `journey.engagd` left a branch always taking its default.
LEAD_FACTS = tuple(f.name for f in dataclasses.fields(LeadSnapshot))
JOURNEY_FACTS = ("key", "version", "step", "stage", "stage_index", "engaged", "days_in_journey")
# A journey key, a stage id and a step id are stored in columns 64 characters wide (journeys' tables,
# messaging's message rows): a longer one is refused here, where it can be named, not at its first run.
ID_MAX = 64
JOURNEY_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")


PRIORITY_MAX = 1000


def _strings(value: object) -> tuple[str, ...]:
    """A list of strings as a tuple; anything else (a problem `load` lists) as none."""
    return tuple(value) if isinstance(value, list) and all(isinstance(x, str) for x in value) else ()


def key_problem(key: object) -> str | None:
    """Why `key` cannot be a journey key, or None: lower-case snake_case, at most ID_MAX characters."""
    if not isinstance(key, str) or not key:
        return "must be a non-empty string"
    if len(key) > ID_MAX:
        return f"must be at most {ID_MAX} characters (it has {len(key)})"
    if not JOURNEY_KEY.fullmatch(key):
        return "must be snake_case: lower-case letters, digits and _, starting with a letter"
    return None
_DURATION = re.compile(r"^([+-]?)(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION_S = 3650 * 86400  # ten years: longer than any nurture wait, well inside the calendar


class DefinitionError(DataFileError):
    """A definition (or a playbook file) that cannot be used; `problems` lists every reason."""

    def __init__(self, problems: list[str], journey: Journey | None = None) -> None:
        super().__init__(problems)
        self.journey = journey   # what could be built despite the problems (for the cross checks)


def parse_duration(value: JsonValue) -> timedelta:
    """`90s`, `15m`, `2h`, `3d`, `1w` (optionally signed) or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r}")
    if isinstance(value, int | float):
        seconds: float = float(value)
    else:
        m = _DURATION.match(str(value).strip())
        if not m:
            raise ValueError(f"bad duration {value!r} (expected e.g. 2d, -2h, 30m)")
        seconds = int(m.group(2)) * _UNITS[m.group(3)] * (-1 if m.group(1) == "-" else 1)
    # Bounded: a wait of centuries was stored, then overflowed the calendar when a lead reached it.
    if not abs(seconds) <= MAX_DURATION_S:
        raise ValueError(f"bad duration {value!r} (at most {MAX_DURATION_S // 86400} days either way)")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class Rule:
    """An entry, exit or trigger rule: which event types it listens to and its condition."""

    name: str
    events: tuple[str, ...]
    when: JsonMapping  # a condition in nurture.rules' grammar
    outcome: str = "exit"
    action: TriggerAction = field(default_factory=TriggerAction)  # a trigger's `do`
    once: bool = False
    cooldown: timedelta | None = None
    why: str = ""
    date: TimeSpec | None = None  # date-relative entry: {fact: lead.<date property>, offset}
    # An entry rule's own re-entry (never | always | after), in place of the journey's; None: the journey's.
    reentry: str | None = None
    reentry_after: timedelta | None = None
    # A trigger that also holds on the event that enrolled the lead (checked once the entry's steps due at
    # once have run: the welcome goes, then the jump); without it, that event is the entry's alone.
    on_entry: bool = False

    def listens_to(self, event_type: str) -> bool:
        return "*" in self.events or event_type in self.events


@dataclass(frozen=True)
class Journey:
    """A loaded definition of one version."""

    key: str
    name: str
    kind: str
    mode: str
    priority: int
    category: str
    reentry: str
    reentry_after: timedelta | None
    pauses: tuple[str, ...]
    entity: str | None
    anchors: Mapping[str, str]
    reanchor_events: tuple[str, ...]
    stages: tuple[str, ...]
    stage_names: Mapping[str, str]
    entry: tuple[Rule, ...]
    exits: tuple[Rule, ...]
    triggers: tuple[Rule, ...]
    steps: Mapping[str, Step]
    first: str
    document: JsonMapping  # as written: what is stored and what the API returns
    version: int = 0
    digest: str = ""
    enter_until: TimeSpec | None = None  # past this time an entry is refused

    def step(self, step_id: str) -> Step:
        return self.steps[step_id]

    def stage_index(self, stage: str | None) -> int:
        return self.stages.index(stage) if stage in self.stages else -1

    @property
    def rule_reentry(self) -> bool:
        """Whether an entry rule has a re-entry policy of its own."""
        return any(r.reentry is not None for r in self.entry)

    def templates(self) -> list[str]:
        """Every template key this journey sends."""
        return [template_of(self, s) for s in self.steps.values() if isinstance(s, SendStep)]

    @property
    def on_entry_events(self) -> frozenset[str]:
        """Event types an `on_entry` trigger listens to ("*": any): an entry on one keeps its event for them."""
        return frozenset(etype for rule in self.triggers if rule.on_entry for etype in rule.events)

    def event_types(self) -> set[str]:
        """Event types any rule of this journey listens to (the Python prefilter before the engine)."""
        out: set[str] = set()
        for rule in (*self.entry, *self.exits, *self.triggers):
            out.update(rule.events)
        for s in self.steps.values():
            if isinstance(s, WaitStep) and s.event is not None:
                out.update(s.event.types)
        out.update(self.reanchor_events)
        return out


def template_of(journey: Journey, step: SendStep) -> str:
    """The template key of a send step: `<journey_key>.<step_id>` unless the step names one."""
    return step.template or f"{journey.key}.{step.id}"


def _reentry(raw: JsonValue, where: str, problems: list[str]) -> tuple[str, timedelta | None]:
    """`never`, `always` or `{after: <duration>}`: (never | always | after, the duration of after)."""
    if isinstance(raw, Mapping) and "after" in raw:
        try:
            return "after", parse_duration(raw["after"])
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            return "never", None
    if raw in ("never", "always"):
        return str(raw), None
    problems.append(f"{where}: never, always or {{after: <duration>}}")
    return "never", None


def _rules(raw: JsonValue, where: str, problems: list[str], *, kind: str, key: str = "") -> tuple[Rule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append(f"{where}: expected a list")
        return ()
    out: list[Rule] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{at}: expected a mapping")
            continue
        name = item.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]+", name):
            problems.append(f"{at}: 'name' must be snake_case")
            name = f"rule_{i}"
        if name in names:
            problems.append(f"{at}: duplicate rule name {name}")
        names.add(name)
        events = item.get("events")
        date = item.get("date") if kind == "entry" else None
        if date is not None:
            # A date-relative entry fires from the lead-level timer as the synthetic `date_reached`
            # event, and only for this rule.
            if not isinstance(date, Mapping) or not str(date.get("fact", "")).startswith("lead."):
                problems.append(f"{where}.{name}: date needs {{fact: lead.<property>, offset}}")
                date = None
            else:
                try:
                    parse_duration(date.get("offset", 0))
                except ValueError as exc:
                    problems.append(f"{where}.{name}: {exc}")
            events = ["date_reached"]
        if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
            problems.append(f"{where}.{name}: 'events' must be a non-empty list of event types")
            events = []
        when = item.get("when", {"fact": "event.type", "exists": True})
        problems.extend(f"{where}.{name}.{p}" for p in validate_condition(when))
        if date is not None:
            when = {"all": [{"fact": "event.properties.date_rule", "eq": f"{key}.{name}"}, when]}
        outcome = str(item.get("outcome", "exit"))
        if kind == "exit" and outcome not in ("goal", "exit"):
            problems.append(f"{where}.{name}: outcome must be goal or exit")
        action = item.get("do", {}) if kind == "trigger" else {}
        if kind == "trigger":
            if not isinstance(action, Mapping) or not action or set(action) - set(ACTIONS):
                problems.append(f"{where}.{name}: 'do' needs one or more of {', '.join(ACTIONS)}")
                action = {}
            elif "pace" in action and not (isinstance(action["pace"], int | float) and 0 < action["pace"] <= 4):
                problems.append(f"{where}.{name}: pace must be a number in (0, 4]")
            elif "anchor" in action and action["anchor"] is not True:
                problems.append(f"{where}.{name}: anchor must be true (or left out)")
        reentry: tuple[str, timedelta | None] | None = None
        if "reentry" in item:
            if kind == "entry":
                reentry = _reentry(item["reentry"], f"{where}.{name}.reentry", problems)
            else:
                problems.append(f"{where}.{name}: reentry is an entry rule's (or the journey's)")
        on_entry = item.get("on_entry", False)
        if kind != "trigger" and "on_entry" in item:
            problems.append(f"{where}.{name}: on_entry is a trigger rule's")
            on_entry = False
        elif not isinstance(on_entry, bool):
            problems.append(f"{where}.{name}: on_entry must be true or false")
            on_entry = False
        cooldown = None
        if item.get("cooldown") is not None:
            try:
                cooldown = parse_duration(item["cooldown"])
            except ValueError as exc:
                problems.append(f"{where}.{name}: {exc}")
        out.append(Rule(name=name, events=tuple(events), when=when, outcome=outcome, action=trigger_action(action),
                        once=bool(item.get("once", cooldown is None and kind == "trigger")),
                        cooldown=cooldown, why=str(item.get("why", "")),
                        date=time_spec(date, parse_duration),
                        reentry=reentry[0] if reentry else None, reentry_after=reentry[1] if reentry else None,
                        on_entry=on_entry))
    return tuple(out)


def load(document: JsonMapping, *, version: int = 0) -> Journey:
    """Build a Journey from a document, raising DefinitionError with every structural problem.
    Cross-journey and template checks are `validate`'s."""
    problems: list[str] = []
    if not isinstance(document, Mapping):
        raise DefinitionError(["definition: expected a mapping"])
    key = document.get("key")
    key_wrong = key_problem(key)
    if key_wrong or not isinstance(key, str):
        problems.append(f"key: {key_wrong}")
        key = "invalid"
    kind = document.get("kind")
    mode = document.get("mode", "flow")
    if isinstance(kind, str) and kind in LEGACY_KINDS and "mode" not in document:
        kind, mode = LEGACY_KINDS[kind]
    if kind not in KINDS:
        problems.append(f"kind: must be one of {', '.join(KINDS)}")
    if mode not in MODES:
        problems.append(f"mode: must be one of {', '.join(MODES)}")
    priority = document.get("priority", 50)
    if not isinstance(priority, int) or isinstance(priority, bool) or not -PRIORITY_MAX <= priority <= PRIORITY_MAX:
        # Bounded: the value is carried in the API's int32 fields, where a larger one failed every listing.
        problems.append(f"priority: must be an integer from {-PRIORITY_MAX} to {PRIORITY_MAX}")
        priority = 50
    name = document.get("name", key)
    if not isinstance(name, str):
        problems.append("name: must be a string")
    entity = document.get("entity")
    if entity is not None and not (isinstance(entity, str) and entity):
        problems.append("entity: must be the name of an event property (a string)")
        entity = None
    for field_name in ("pauses", "reanchor_events"):
        listed = document.get(field_name)
        if listed is not None and not (isinstance(listed, list) and all(isinstance(x, str) for x in listed)):
            problems.append(f"{field_name}: must be a list of strings")
    category = document.get("category", "nurture")
    if category not in ("nurture", "transactional"):
        problems.append("category: must be nurture or transactional")
    reentry, reentry_after = _reentry(document.get("reentry", "never"), "reentry", problems)
    stages_raw = document.get("stages") or []
    stages: list[str] = []
    stage_names: dict[str, str] = {}
    for i, st in enumerate(stages_raw):
        if not isinstance(st, Mapping) or not isinstance(st.get("id"), str):
            problems.append(f"stages[{i}]: needs an id")
            continue
        if not st["id"] or len(st["id"]) > ID_MAX:
            problems.append(f"stages[{i}]: id must be 1 to {ID_MAX} characters")
            continue
        stages.append(st["id"])
        stage_names[st["id"]] = str(st.get("name", st["id"]))
    anchors = document.get("anchors") or {}
    if not isinstance(anchors, Mapping) or not all(isinstance(v, str) for v in anchors.values()):
        problems.append("anchors: expected a mapping of name to event property")
        anchors = {}
    steps_raw = document.get("steps")
    if not isinstance(steps_raw, list) or not steps_raw:
        problems.append("steps: expected a non-empty list")
        steps_raw = []
    steps: dict[str, Step] = {}
    raws: dict[str, JsonMapping] = {}
    for i, raw in enumerate(steps_raw):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), str):
            problems.append(f"steps[{i}]: needs an id")
            continue
        sid = raw["id"]
        if not sid or len(sid) > ID_MAX:
            problems.append(f"steps[{i}]: id must be 1 to {ID_MAX} characters")
            continue
        if sid in steps:
            problems.append(f"step {sid}: duplicate id")
            continue
        stype = raw.get("type")
        if stype not in STEP_TYPES:
            problems.append(f"step {sid}: unknown type {stype!r}")
        nxt = raw.get("next")
        if nxt is None and stype not in TERMINAL and i + 1 < len(steps_raw):
            following = steps_raw[i + 1]
            nxt = following.get("id") if isinstance(following, Mapping) else None
        stage = raw.get("stage")
        if stage is not None and stage not in stage_names:
            problems.append(f"step {sid}: unknown stage {stage!r}")
        raws[sid] = raw
        steps[sid] = build_step(raw, sid=sid, stype=str(stype), nxt=nxt, stage=stage, category=str(category),
                                parse=parse_duration)
    journey = Journey(
        key=key, name=str(name), kind=str(kind), mode=str(mode), priority=int(priority),
        category=str(category), reentry=reentry, reentry_after=reentry_after,
        pauses=_strings(document.get("pauses")), entity=entity,
        anchors={str(k): str(v) for k, v in anchors.items()},
        reanchor_events=_strings(document.get("reanchor_events")),
        stages=tuple(stages), stage_names=stage_names,
        entry=_rules(document.get("entry"), "entry", problems, kind="entry", key=key),
        exits=_rules(document.get("exit"), "exit", problems, kind="exit"),
        triggers=_rules(document.get("triggers"), "triggers", problems, kind="trigger"),
        steps=steps, first=next(iter(steps), ""), document=document, version=version,
        enter_until=time_spec(document.get("enter_until"), parse_duration),
        digest=hashlib.sha1(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()[:12],
    )
    enter_until = document.get("enter_until")
    if enter_until is not None:
        if isinstance(enter_until, Mapping) and "delay" in enter_until:
            problems.append("enter_until: needs an anchor or lead fact with an offset, not a delay")
        else:
            problems.extend(_check_time(enter_until, "enter_until", journey.anchors))
    problems.extend(_check_steps(journey, raws))
    problems.extend(_check_on_entry(journey))
    if problems:
        raise DefinitionError(problems, journey if key != "invalid" else None)
    return journey


def _check_on_entry(journey: Journey) -> list[str]:
    """An `on_entry` trigger must listen to an event type that can enrol the lead, or it never holds there."""
    problems = []
    for rule in journey.triggers:
        if rule.on_entry and not any(rule.listens_to(etype) or etype == "*"
                                     for entry in journey.entry for etype in entry.events):
            problems.append(f"triggers.{rule.name}: on_entry, but none of its events "
                            f"({', '.join(rule.events)}) enrols the lead (entry rules' events)")
    return problems


def _edges(step: Step) -> list[tuple[str | None, str]]:
    """(target, label) pairs leaving a step."""
    out: list[tuple[str | None, str]] = []
    if isinstance(step, WaitStep) and step.event is not None:
        out += [(step.on_event, "on_event"), (step.on_timeout, "on_timeout")]
    elif isinstance(step, BranchStep):
        out += [(rule.next, f"rule {rule.name}") for rule in step.rules]
        out.append((step.default, "default"))
    elif isinstance(step, SplitStep):
        out += [(variant.next, f"variant {variant.name}") for variant in step.variants]
    elif isinstance(step, JumpStep):
        out.append((step.to, "to"))
    elif step.next is not None:
        out.append((step.next, "next"))
    if isinstance(step, WaitStep) and step.if_past is not None:
        out.append((step.if_past, "if_past"))
    return out


def _check_time(spec: JsonValue, where: str, anchors: Mapping[str, str]) -> list[str]:
    if not isinstance(spec, Mapping):
        return [f"{where}: expected a mapping"]
    problems: list[str] = []
    if "delay" in spec:
        try:
            if parse_duration(spec["delay"]) < timedelta(0):
                problems.append(f"{where}: delay must not be negative")
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
        return problems
    if "anchor" in spec:
        if spec["anchor"] != "entered_at" and spec["anchor"] not in anchors:
            problems.append(f"{where}: unknown anchor {spec['anchor']!r} (declare it under anchors)")
    elif "fact" in spec:
        if not str(spec["fact"]).startswith("lead."):
            problems.append(f"{where}: a date fact must be a lead property (lead.*)")
    else:
        return [f"{where}: needs delay, anchor or fact"]
    try:
        parse_duration(spec.get("offset", 0))
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
    return problems


def _check_step(j: Journey, s: Step, raw: JsonMapping) -> list[str]:
    """The problems of one step, read from the document as written (the typed step is lenient)."""
    at = f"step {s.id}"
    p: list[str] = []
    for option in ("skip_if_late", "skip_after", "skip_from"):
        if raw.get(option) is not None and s.type not in EFFECT_TYPES:
            p.append(f"{at}: {option} applies to send, task, webhook and update steps")
    if raw.get("skip_after") is not None and raw.get("skip_from") is not None:
        p.append(f"{at}: one of skip_after (after that time) or skip_from (from that time on), not both")
    if raw.get("skip_from") is not None:
        p += _check_time(raw.get("skip_from"), f"{at}.skip_from", j.anchors)
    if raw.get("not_after") is not None:
        if s.type != "wait" or raw.get("until") is None:
            p.append(f"{at}: not_after applies to until waits (the wait ends at the earlier of the two)")
        else:
            p += _check_time(raw.get("not_after"), f"{at}.not_after", j.anchors)
    if raw.get("skip_if_late") is not None:
        try:
            if parse_duration(raw.get("skip_if_late")) < timedelta(0):
                p.append(f"{at}: skip_if_late must not be negative")
        except ValueError as exc:
            p.append(f"{at}.skip_if_late: {exc}")
    if raw.get("skip_after") is not None:
        p += _check_time(raw.get("skip_after"), f"{at}.skip_after", j.anchors)
    if raw.get("budget") is not None and s.type != "send":
        p.append(f"{at}: budget applies to send steps")
    if s.type == "send":
        if raw.get("channel", "email") not in CHANNELS:
            p.append(f"{at}: channel must be one of {', '.join(CHANNELS)}")
        if raw.get("category", j.category) not in ("nurture", "transactional"):
            p.append(f"{at}: category must be nurture or transactional")
        if raw.get("budget", "counted") not in ("counted", "exempt"):
            p.append(f"{at}: budget must be counted or exempt")
    elif s.type == "wait":
        forms = [k for k in ("delay", "until", "event") if raw.get(k) is not None]
        if len(forms) != 1:
            p.append(f"{at}: a wait needs exactly one of delay, until, event")
        elif forms[0] == "delay":
            p += _check_time({"delay": raw.get("delay")}, at, j.anchors)
        elif forms[0] == "until":
            p += _check_time(raw.get("until"), f"{at}.until", j.anchors)
        else:
            ev = raw.get("event")
            if not isinstance(ev, Mapping) or not isinstance(ev.get("types"), list) or not ev["types"]:
                p.append(f"{at}.event: needs a non-empty list of types")
            elif ev.get("when") is not None:
                p += [f"{at}.event.when.{x}" for x in validate_condition(ev.get("when"))]
            if raw.get("timeout") is None:
                p.append(f"{at}: an event wait needs a timeout")
            else:
                p += _check_time(raw.get("timeout"), f"{at}.timeout", j.anchors)
            for k in ("on_event", "on_timeout"):
                if raw.get(k) is None:
                    p.append(f"{at}: {k} is required")
    elif s.type == "branch":
        rules = raw.get("rules")
        if not isinstance(rules, list) or not rules:
            p.append(f"{at}: a branch needs rules")
        else:
            for i, r in enumerate(rules):
                if not isinstance(r, Mapping) or not isinstance(r.get("name"), str):
                    p.append(f"{at}.rules[{i}]: needs a name")
                    continue
                p += [f"{at}.{r['name']}.{x}" for x in validate_condition(r.get("when"))]
        if raw.get("default") is None:
            p.append(f"{at}: a branch needs a default")
    elif s.type == "split":
        variants = raw.get("variants")
        if not isinstance(variants, list) or len(variants) < 2:
            p.append(f"{at}: a split needs two or more variants")
        else:
            for i, v in enumerate(variants):
                w = v.get("weight") if isinstance(v, Mapping) else None
                if not isinstance(w, int | float) or isinstance(w, bool) or w <= 0:
                    p.append(f"{at}.variants[{i}]: weight must be a positive number")
    elif s.type == "jump" and raw.get("to") is None:
        p.append(f"{at}: a jump needs 'to'")
    elif s.type in ("enrol", "exit") and not isinstance(raw.get("journey"), str):
        p.append(f"{at}: needs 'journey'")
    elif s.type == "update" and not (isinstance(raw.get("set"), Mapping) and raw.get("set")):
        p.append(f"{at}: an update needs a non-empty 'set' mapping")
    elif s.type == "task":
        if raw.get("kind") not in TASK_KINDS:
            p.append(f"{at}: task kind must be one of {', '.join(TASK_KINDS)}")
        if not raw.get("title"):
            p.append(f"{at}: a task needs a title")
        if raw.get("due") is not None:
            try:
                parse_duration(raw.get("due"))
            except ValueError as exc:
                p.append(f"{at}: {exc}")
    elif s.type == "webhook" and not (raw.get("url") or raw.get("template")):
        p.append(f"{at}: a webhook needs a url or template")
    return p


def _check_steps(j: Journey, raws: Mapping[str, JsonMapping]) -> list[str]:
    problems: list[str] = []
    for s in j.steps.values():
        problems += _check_step(j, s, raws[s.id])
        for target, label in _edges(s):
            if target is None:
                if label != "next":
                    problems.append(f"step {s.id}: {label} has no target")
            elif target not in j.steps:
                problems.append(f"step {s.id}: {label} goes to unknown step {target!r}")
    roots: list[str] = [j.first] if j.first else []
    side: set[str] = set()  # a trigger's side steps run alone: what follows them is not reached through them
    for rule in j.triggers:
        action = rule.action
        for verb, named in (("goto", action.goto), ("send", action.send), ("task", action.task),
                            ("update", action.update)):
            target = named or ""
            if not target:
                continue
            if target not in j.steps:
                problems.append(f"triggers.{rule.name}: {verb} names unknown step {target!r}")
                continue
            if verb == "goto":
                roots.append(target)
            else:
                side.add(target)
            if verb == "send" and j.steps[target].type not in ("send", "webhook"):
                problems.append(f"triggers.{rule.name}: send needs a send step, {target} is a {j.steps[target].type}")
            if verb == "task" and j.steps[target].type != "task":
                problems.append(f"triggers.{rule.name}: task needs a task step, {target} is a {j.steps[target].type}")
            if verb == "update" and j.steps[target].type != "update":
                problems.append(f"triggers.{rule.name}: update needs an update step, {target} is a "
                                f"{j.steps[target].type}")
    # Reachability from the first step and every trigger target.
    seen = _reached(j, roots)
    problems += [f"step {sid}: unreachable" for sid in j.steps if sid not in seen | side]
    problems += _instant_loops(j)
    return problems


def _reached(j: Journey, roots: Iterable[str]) -> set[str]:
    """The steps reached from `roots` along the steps' edges."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        sid = todo.pop()
        if sid in seen or sid not in j.steps:
            continue
        seen.add(sid)
        todo.extend(str(t) for t, _ in _edges(j.steps[sid]) if t is not None)
    return seen


def _holds(step: Step, label: str) -> bool:
    """Whether leaving `step` by the edge `label` takes time: a listen, an event wait's `on_event` (an
    event must come), and a wait whose time is later than its start. A wait of no time (`delay: 0s`, an
    event wait's `timeout: {delay: 0s}`) ends at the instant it starts, and `if_past` is taken when the
    time has passed already."""
    if step.type == "listen":
        return True
    if not isinstance(step, WaitStep) or label == "if_past":
        return False
    if step.event is not None:
        if label == "on_event":
            return True
        timeout = step.timeout
        return timeout is None or timeout.delay is None or timeout.delay > timedelta(0)
    return step.delay is None or step.delay > timedelta(0)


def _instant_loops(j: Journey, *, idle_waits: bool = False) -> list[str]:
    """Cycles that pass through no wait: they would run forever at one instant. With `idle_waits` (a new
    definition's check, `check`), the cycles whose only waits take no time (`_holds`): such a loop ran
    forever at one instant too (a transactional send in it was queued ~30,000 times in two minutes, and
    the virtual clock's advance never returned). Stored versions are loaded without it, as they were
    accepted."""
    if idle_waits:
        graph = {sid: [t for t, label in _edges(s) if t is not None and t in j.steps and not _holds(s, label)]
                 for sid, s in j.steps.items()}
    else:
        graph = {sid: [t for t, _ in _edges(s) if t is not None and t in j.steps
                       and j.steps[t].type not in ("wait", "listen")]
                 for sid, s in j.steps.items() if s.type not in ("wait", "listen")}
    problems: list[str] = []
    state: dict[str, int] = {}
    reported: set[frozenset[str]] = set()

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):]
                idle = [sid for sid in cycle if j.steps[sid].type == "wait"]
                if frozenset(cycle) not in reported and (idle or not idle_waits):
                    # (with idle_waits, a loop through no wait at all is the lenient pass's to name)
                    reported.add(frozenset(cycle))
                    problems.append(f"loop without a wait: {' -> '.join([*cycle, nxt])}"
                                    + (f" ({', '.join(idle)} waits no time)" if idle else ""))
            elif state.get(nxt) is None:
                visit(nxt, path)
        path.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
    return problems


def validate(journey: Journey, *, journeys: Iterable[str] | None = None,
             templates: Iterable[str] | None = None, drafts: Mapping[str, int] | None = None) -> list[str]:
    """Cross-definition problems: other journeys named by enrol/exit, and templates unknown to
    messaging (only checked when the caller knows the template list). `drafts` names the templates that
    exist with drafts only (key -> latest version): such a step's problem says to publish one, not that
    the template is missing."""
    problems: list[str] = []
    known = set(journeys) if journeys is not None else None
    if known is not None:
        names = [(f"step {s.id}", s.journey) for s in journey.steps.values() if isinstance(s, JourneyStep)]
        names += [(f"triggers.{r.name}", name) for r in journey.triggers for name in (r.action.enrol, r.action.exit)
                  if name]
        problems += [f"{where}: unknown journey {name!r}" for where, name in names if name not in known]
    if templates is not None:
        have = set(templates)
        for s in journey.steps.values():
            if isinstance(s, SendStep) and (s.type == "send" or s.template):
                key = template_of(journey, s)
                if key in have:
                    continue
                if drafts and key in drafts:
                    problems.append(f"step {s.id}: template {key!r} has no published version (draft "
                                    f"{drafts[key]} exists: publish it first, POST /v1/templates/{key}/publish)")
                else:
                    problems.append(f"step {s.id}: missing template {key!r}")
    return problems


def _known_fact(fact: str) -> bool:
    root, _, rest = fact.partition(".")
    first = rest.split(".", 1)[0]
    if root == "lead":
        return not rest or first in LEAD_FACTS
    if root == "event":
        return fact in ("event.type", "event.properties") or fact.startswith("event.properties.")
    if root == "journey":
        return first in JOURNEY_FACTS and "." not in rest
    return fact == "signals" or root == "journeys"


def _unknown_facts(cond: JsonValue, path: str) -> list[str]:
    """Every fact of a condition that no journey condition can read (the condition's grammar is
    `validate_condition`'s to check)."""
    if not isinstance(cond, Mapping):
        return []
    for part in ("all", "any"):
        if isinstance(cond.get(part), list):
            return [p for i, sub in enumerate(cond[part]) for p in _unknown_facts(sub, f"{path}.{part}[{i}]")]
    fact = cond.get("fact")
    if not isinstance(fact, str) or _known_fact(fact):
        return []
    return [f"{path}: unknown fact {fact[:80]!r} (facts: lead.<{'|'.join(LEAD_FACTS)}>..., event.type, "
            f"event.properties.<name>, signals, journeys.<journey key>, journey.<{'|'.join(JOURNEY_FACTS)}>)"]


def _unknown_events(events: JsonValue, where: str) -> list[str]:
    """Event types no event can have (scoring takes lower-case words only): a rule or wait on one never
    fires. `*` (any event) is one an entry rule may listen to."""
    if not isinstance(events, list):
        return []
    return [f"{where}: {str(e)[:80]!r} is not an event type (a lower-case word such as page_viewed)"
            for e in events if e != "*" and not (isinstance(e, str) and EVENT_NAME.fullmatch(e))]


def _negative(raw: JsonValue, where: str) -> list[str]:
    try:
        return [f"{where} must not be negative"] if raw is not None and parse_duration(raw) < timedelta(0) else []
    except (ValueError, TypeError):
        return []   # a bad duration is `load`'s to name


def _new_definition_problems(document: JsonMapping, journey: Journey | None) -> list[str]:
    """What a new definition (PUT) must not have, though versions stored before these checks may (they
    keep loading, `load`): a fact or event type that never occurs (a typo: the rule silently never
    held), a negative cooldown (read as none: the trigger fired on every event) or reentry delay (read as
    `always`), and a loop whose only waits take no time."""
    problems: list[str] = []
    reentry = document.get("reentry")
    if isinstance(reentry, Mapping):
        problems += _negative(reentry.get("after"), "reentry: after")
    for part, label in (("entry", "entry"), ("exit", "exit"), ("triggers", "triggers")):
        rules = document.get(part)
        for i, rule in enumerate(rules if isinstance(rules, list) else []):
            if not isinstance(rule, Mapping):
                continue
            where = f"{label}.{rule.get('name') if isinstance(rule.get('name'), str) else f'[{i}]'}"
            problems += _unknown_events(rule.get("events"), f"{where}.events")
            problems += _unknown_facts(rule.get("when"), f"{where}.when")
            problems += _negative(rule.get("cooldown"), f"{where}: cooldown")
            if isinstance(rule.get("reentry"), Mapping):
                problems += _negative(rule["reentry"].get("after"), f"{where}.reentry: after")
    steps = document.get("steps")
    for step in steps if isinstance(steps, list) else []:
        if not isinstance(step, Mapping):
            continue
        at = f"step {step.get('id')}"
        event = step.get("event")
        if step.get("type") == "wait" and isinstance(event, Mapping):
            problems += _unknown_events(event.get("types"), f"{at}.event.types")
            problems += _unknown_facts(event.get("when"), f"{at}.event.when")
        rules = step.get("rules")
        if step.get("type") == "branch" and isinstance(rules, list):
            for rule in rules:
                if isinstance(rule, Mapping) and isinstance(rule.get("name"), str):
                    problems += _unknown_facts(rule.get("when"), f"{at}.{rule['name']}.when")
    if journey is not None:
        problems += _instant_loops(journey, idle_waits=True)
        problems += _side_steps_in_the_flow(journey)
    return problems


def _side_steps_in_the_flow(j: Journey) -> list[str]:
    """A trigger's `send` (or `task`, `update`) names a side step: one the flow never reaches. Naming a
    step of the flow sent its template twice, by the trigger and again when the flow came to it (a
    student who viewed the scholarships page got "Scholarships you can still apply for" on day 0 and day 10)."""
    flow = _reached(j, [*([j.first] if j.first else []), *(r.action.goto for r in j.triggers if r.action.goto)])
    return [f"triggers.{rule.name}: {verb} names {target}, a step of the flow: it would run twice (now, and "
            f"again when the flow reaches it); name a side step the flow does not reach, or goto {target}"
            for rule in j.triggers
            for verb, target in (("send", rule.action.send), ("task", rule.action.task), ("update", rule.action.update))
            if target and target in flow]


def check(document: JsonMapping, *, journeys: Iterable[str] | None = None,
          templates: Iterable[str] | None = None, drafts: Mapping[str, int] | None = None,
          version: int = 0) -> tuple[Journey | None, list[str]]:
    """Load and validate: (journey or None, every problem). A new definition must use API.md's kinds;
    only stored versions may keep the legacy `kind: triggers` (see `load`)."""
    legacy = document.get("kind") if isinstance(document, Mapping) else None
    if isinstance(legacy, str) and legacy in LEGACY_KINDS:
        kind, mode = LEGACY_KINDS[legacy]
        return None, [f"kind: {legacy} is no longer a kind: use kind: {kind} with mode: {mode}"]
    try:
        journey = load(document, version=version)
    except DefinitionError as exc:
        # Every problem at once: unknown templates and journeys too, not only the structural ones.
        partial = (validate(exc.journey, journeys=journeys, templates=templates, drafts=drafts)
                   if exc.journey else [])
        partial += _new_definition_problems(document, exc.journey)
        return None, exc.problems + [p for p in partial if p not in exc.problems]
    problems = validate(journey, journeys=journeys, templates=templates, drafts=drafts)
    return journey, problems + _new_definition_problems(document, journey)


def read_playbook(directory: Path = PLAYBOOK_DIR) -> dict[str, JsonObject]:
    """Every journey document under the playbook directory, by key (files starting with _ are settings)."""
    out: dict[str, JsonObject] = {}
    for path in sorted(directory.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        try:
            doc = read_yaml(path)
        except DataFileError as exc:
            raise DefinitionError([f"{path.name}: {p}" for p in exc.problems]) from exc
        if not isinstance(doc, dict) or "key" not in doc:
            raise DefinitionError([f"{path.name}: not a journey definition"])
        if doc["key"] != path.stem:
            raise DefinitionError([f"{path.name}: key {doc['key']!r} differs from the file name"])
        out[doc["key"]] = doc
    return out


@dataclass(frozen=True)
class PlaybookSettings:
    budget_window: timedelta = timedelta(days=1)
    budget_max: int = 2
    inactivity_days: tuple[int, ...] = (14,)
    engagement_events: frozenset[str] = frozenset({"email_opened", "email_clicked", "page_viewed"})
    # Exits every journey of the named categories takes beside its own (the closed loop: sales said no).
    exits: tuple[GlobalExit, ...] = ()
    # Quiet-period clocks beside `inactivity`, each posting its own synthetic event.
    clocks: tuple[Clock, ...] = ()


@dataclass(frozen=True)
class Clock:
    """A quiet-period clock: `event` is posted `days` (each threshold once) after the last of its
    `reset_by` events, counted from its first `starts_on` event (e.g. the first email sent, for "no
    email opens for 14+ days")."""

    event: str
    days: tuple[int, ...]
    reset_by: frozenset[str]
    starts_on: frozenset[str]

    @property
    def key(self) -> str:
        return CLOCK_PREFIX + self.event


@dataclass(frozen=True)
class GlobalExit:
    name: str
    events: frozenset[str]
    categories: frozenset[str]
    keep: frozenset[str]  # journeys that stay (e.g. the recycle track the same event enters)
    why: str = ""


def _duration(value: JsonValue) -> timedelta:
    try:
        return parse_duration(value)
    except (ValueError, TypeError):
        raise ValueError("must be a duration such as 1d, 12h or 30m") from None


def _event_types(value: JsonValue) -> JsonValue:
    if not isinstance(value, list) or not value or not all(isinstance(e, str) and e for e in value):
        raise ValueError("must be a list of event types")
    return value


def _event_name(value: JsonValue) -> JsonValue:
    if not isinstance(value, str) or not EVENT_NAME.fullmatch(value):
        raise ValueError("must be an event type such as email_inactivity")
    return value


def _positive_days(value: JsonValue) -> JsonValue:
    if not isinstance(value, list) or not value or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value):
        raise ValueError("must be a list of positive whole days")
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
EventTypes = Annotated[list[str], BeforeValidator(_event_types)]
Days = Annotated[list[int], BeforeValidator(_positive_days)]
EventName = Annotated[str, BeforeValidator(_event_name)]


class BudgetEntry(Strict):
    window: Duration = timedelta(days=1)
    max: int = Field(default=2, ge=0)


class ClockEntry(Strict):
    event: EventName
    days: Days
    reset_by: EventTypes
    starts_on: EventTypes


class ExitEntry(Strict):
    name: str = Field(min_length=1)
    events: EventTypes
    categories: list[str] = Field(default_factory=list)  # none named: the nurture journeys
    keep: list[str] = Field(default_factory=list)
    why: str = ""


class SettingsFile(Strict):
    """_settings.yaml (its comments say what each part means)."""

    budget: BudgetEntry = BudgetEntry()
    inactivity_days: Days = [14]
    engagement_events: list[str] = Field(default_factory=list)
    exits: list[ExitEntry] = Field(default_factory=list)
    clocks: list[ClockEntry] = Field(default_factory=list)


def read_settings(directory: Path = PLAYBOOK_DIR) -> PlaybookSettings:
    """_settings.yaml, or the defaults without one; a DefinitionError listing every problem."""
    path = directory / "_settings.yaml"
    raw = read_yaml(path, missing=None, empty={})
    if raw is None:
        return PlaybookSettings()
    try:
        checked = validate_file(SettingsFile, raw, where=path.name)
    except DataFileError as exc:
        raise DefinitionError(exc.problems) from None
    return PlaybookSettings(
        budget_window=checked.budget.window,
        budget_max=checked.budget.max,
        inactivity_days=tuple(checked.inactivity_days),
        engagement_events=frozenset(checked.engagement_events),
        exits=tuple(GlobalExit(name=x.name, events=frozenset(x.events),
                               categories=frozenset(x.categories or ["nurture"]), keep=frozenset(x.keep), why=x.why)
                    for x in checked.exits),
        clocks=tuple(Clock(event=c.event, days=tuple(sorted(c.days)), reset_by=frozenset(c.reset_by),
                           starts_on=frozenset(c.starts_on)) for c in checked.clocks),
    )


def load_playbook(directory: Path = PLAYBOOK_DIR) -> dict[str, Journey]:
    """Load and validate the whole playbook, raising DefinitionError listing every problem."""
    docs = read_playbook(directory)
    journeys: dict[str, Journey] = {}
    problems: list[str] = []
    for key, doc in docs.items():
        journey, found = check(doc, journeys=docs.keys(), version=1)
        problems += [f"{key}: {p}" for p in found]
        if journey is not None:
            journeys[key] = journey
    if problems:
        raise DefinitionError(problems)
    return journeys


def summary(journeys: Sequence[Journey]) -> list[JsonObject]:
    return [{"key": j.key, "name": j.name, "kind": j.kind, "mode": j.mode, "priority": j.priority} for j in journeys]
