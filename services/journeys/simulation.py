"""Simulation: the real engine, in memory, in virtual time, for synthetic leads and a behaviour model.

Nothing here touches a live lead, Redis, SQL or another service: effects are answered by the
behaviour model (a send is "sent"; opens, clicks and conversions follow with per-segment and per-stage
probabilities). Each lead draws from its own random generator, seeded by the run's `seed` and the lead's
id, and its own queue ordered by (time, -priority, sequence) makes a run deterministic. Leads share
nothing else (the frequency budget, clocks and timers are each lead's own; the engine's memos are pure),
so a lead's story does not depend on which other leads run beside it: leads are run one after the other,
each to the end, and a large run is split into shards of leads run in worker processes, whose funnels
add up to the report one process would have made.
The report is the same funnel analytics computes from recorded history.

Behaviour (all optional):
    {"default": {"open": 0.35, "click": 0.25, "convert": 0.01},     # click/convert are given an open/click
     "segments": {"family": {"open": 0.45}}, "stages": {"decision": {"convert": 0.04}},
     "actions": {"webinar": 0.1, "attend": 0.4, "trial": 0.05, "trial_convert": 0.2, "checkout": 0.05,
                 "download": 0.25, "assessment": 0.08, "page_views_per_week": 1.0, "unsubscribe": 0.002}}
"""

from __future__ import annotations

import gc
import heapq
import logging
import multiprocessing
import os
import random
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

from nurture.busmessage import BusMessage
from nurture.clock import VIRTUAL_EPOCH
from nurture.jsontypes import JsonMapping, JsonObject
from services.journeys.domain.definitions import Journey, PlaybookSettings, load_playbook, read_settings
from services.journeys.domain.engine import Engine
from services.journeys.domain.funnel import Funnel, totals
from services.journeys.domain.registry import Registry
from services.journeys.domain.state import ACTIVE, LeadState, Outcome, SendPayload, iso, parse_time

# The seed's segments: a run's synthetic leads are spread over these, then over any other segment the
# run's journeys enter on (a segment added to the scoring model as data, with its journey).
SEGMENTS = ("skilled_professional", "family", "entrepreneur")
SEGMENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
DEFAULT_RATES = {"open": 0.35, "click": 0.25, "convert": 0.01}
DEFAULT_ACTIONS = {"webinar": 0.1, "attend": 0.4, "trial": 0.05, "trial_convert": 0.2, "checkout": 0.05,
                   "download": 0.25, "assessment": 0.08, "page_views_per_week": 1.0, "unsubscribe": 0.002}
PAGE_CATEGORIES = ("pricing", "country", "credentials", "education", "healthcare", "investment", "funding",
                   "high_intent", "bottom_funnel", "safety", "fast_track", "business_plan")
log = logging.getLogger(__name__)

MAX_LEADS = 200_000
MAX_DAYS = 365
MAX_WORKERS = 16
# Below this many leads a run stays in the calling process: starting workers (and warming each one's
# rule memos) costs more than the shard saves.
PARALLEL_FROM_LEADS = 1000


class SimulationWorkerDied(RuntimeError):
    """A worker process of a split run died before handing its shard back: the run fails, rather than
    report without that shard's leads (a server fault, not a bad request)."""


class SimulationError(ValueError):
    """A bad simulation request (unknown journey, out-of-range size, a behaviour it cannot read)."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems) or [message]


def _segments_asked(when: Any) -> list[str]:
    """The segments a condition compares `lead.segment` with (eq, or in)."""
    if isinstance(when, Mapping):
        if when.get("fact") == "lead.segment":
            named = when.get("eq", when.get("in"))
            return [s for s in (named if isinstance(named, list) else [named]) if isinstance(s, str)]
        return [s for part in ("all", "any") for sub in when.get(part) or () for s in _segments_asked(sub)]
    return []


def segments_of(journeys: Iterable[Journey]) -> tuple[str, ...]:
    """The segments a run's synthetic leads are spread over by default: the seed's, then those the
    journeys' entry rules ask of `lead.segment`. A journey for a segment added as data enrolled none of
    them, and its simulation was empty."""
    found = [s for j in journeys for rule in j.entry for s in _segments_asked(rule.when)]
    return tuple(dict.fromkeys([*SEGMENTS, *found]))


def check_behaviour(behaviour: JsonMapping, segments: Sequence[str] = SEGMENTS) -> list[str]:
    """Every problem of a behaviour model. A key the model does not read would be silently ignored
    (the run would use defaults while the caller believes otherwise), so it is a problem too: rates of a
    segment none of the run's leads is in (`segments`: the run's by default, `segments_of`) included."""
    problems: list[str] = []

    def number(where: str, value: Any, *, probability: bool) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{where}: must be a number")
        elif value < 0 or (probability and value > 1):
            problems.append(f"{where}: must be between 0 and 1" if probability else f"{where}: must be >= 0")

    def rates(where: str, value: Any) -> None:
        if not isinstance(value, Mapping):
            problems.append(f"{where}: must be an object of {', '.join(DEFAULT_RATES)}")
            return
        for name, rate in value.items():
            if name not in DEFAULT_RATES:
                problems.append(f"{where}.{name}: unknown rate (known: {', '.join(DEFAULT_RATES)})")
            else:
                number(f"{where}.{name}", rate, probability=True)

    known = {"default", "segments", "stages", "actions", "segment_mix"}
    for key in behaviour:
        if key not in known:
            problems.append(f"behaviour.{key}: unknown (known: {', '.join(sorted(known))})")
    if "default" in behaviour:
        rates("behaviour.default", behaviour["default"])
    for part in ("segments", "stages"):
        if part not in behaviour:
            continue
        value = behaviour[part]
        if not isinstance(value, Mapping):
            problems.append(f"behaviour.{part}: must be an object of {part[:-1]} name to rates")
            continue
        for name, sub in value.items():
            mix = behaviour.get("segment_mix")
            theirs = mix if isinstance(mix, list) and mix else segments
            if part == "segments" and name not in theirs:
                problems.append(f"behaviour.segments.{name}: no lead of the run is in this segment (theirs: "
                                f"{', '.join(str(s) for s in theirs)})")
            rates(f"behaviour.{part}.{name}", sub)
    if "actions" in behaviour:
        actions = behaviour["actions"]
        if not isinstance(actions, Mapping):
            problems.append("behaviour.actions: must be an object")
        else:
            for name, value in actions.items():
                if name not in DEFAULT_ACTIONS:
                    problems.append(f"behaviour.actions.{name}: unknown action (known: {', '.join(DEFAULT_ACTIONS)})")
                else:
                    number(f"behaviour.actions.{name}", value, probability=name != "page_views_per_week")
    if "segment_mix" in behaviour:
        mix = behaviour["segment_mix"]
        if not isinstance(mix, list) or not mix or not all(isinstance(x, str) and SEGMENT_NAME.fullmatch(x)
                                                           for x in mix):
            problems.append(f"behaviour.segment_mix: must be a non-empty list of segments, lower-case words "
                            f"(e.g. {', '.join(SEGMENTS)})")
    return problems


@dataclass
class Stats:
    steps: int = 0
    messages: int = 0
    timers: int = 0
    sends: int = 0

    def add(self, other: Stats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


# The event types _apply_counters changes the lead for.
_COUNTED = frozenset({"email_opened", "email_clicked", "resource_downloaded", "page_viewed", "subscribed",
                      "opportunity_won", "unsubscribed"})
# A lead's queue entries are plain tuples (at, -priority, sequence, kind, data): cheaper to compare.
_Item = tuple[datetime, int, int, str, Any]


class Simulation:
    def __init__(self, journeys: Mapping[str, Journey], *, settings: PlaybookSettings | None = None,
                 behaviour: JsonMapping | None = None, seed: int = 1, start: datetime = VIRTUAL_EPOCH) -> None:
        self.journeys = dict(journeys)
        self.registry = Registry()
        for j in journeys.values():
            self.registry.add(j)
            self.registry.publish(j.key, j.version)
        self.settings = settings or read_settings()
        self.engine = Engine(self.settings, self.registry.resolve, self.registry.published)
        self.behaviour = dict(behaviour or {})
        self.segments = list(self.behaviour.get("segment_mix") or segments_of(self.journeys.values()))
        self._rates: dict[tuple[str, str | None, str], float] = {}
        self.seed = seed
        self.start = start
        # The lead being run: its own random generator, its clock (the time of its item being handled)
        # and its queue, taken in (at, -priority, sequence) order.
        self.rng = random.Random()
        self.now = start
        self.queue: list[_Item] = []
        self.seq = 0
        # The leads run in this process (in a run split over workers, none: they stay in the workers).
        self.states: dict[str, LeadState] = {}
        # Every enrolment's (entered at, journey), whichever process ran it (the benchmark's plain loop).
        self.enrolments: list[tuple[datetime, str]] = []
        # CPU seconds the run took in every process (a worker's is not the caller's to measure).
        self.cpu_seconds = 0.0
        self.funnel = Funnel()
        self.stats = Stats()
        self.messages = 0

    # -- behaviour --------------------------------------------------------------------------------

    def _rate(self, segment: str, stage: str | None, name: str) -> float:
        # Worked out once per (segment, stage, rate): the behaviour does not change during a run.
        key = (segment, stage, name)
        rate = self._rates.get(key)
        if rate is None:
            rate = float(self.behaviour.get("default", {}).get(name, DEFAULT_RATES[name]))
            seg = self.behaviour.get("segments", {}).get(segment, {})
            rate = float(seg.get(name, rate))
            st = self.behaviour.get("stages", {}).get(stage or "", {})
            rate = self._rates[key] = min(1.0, max(0.0, float(st.get(name, rate))))
        return rate

    def _action(self, name: str) -> float:
        return float(self.behaviour.get("actions", {}).get(name, DEFAULT_ACTIONS[name]))

    # -- queue ------------------------------------------------------------------------------------

    def _push(self, at: datetime, kind: str, data: Any = None, prio: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, -prio, self.seq, kind, data))

    def _message(self, at: datetime, etype: str, props: JsonObject | None = None) -> None:
        self._push(at, "msg", {"type": etype, "properties": props or {}})

    def _arm(self, state: LeadState, out: Outcome) -> None:
        if not (out.touched or out.runs or out.transitions or out.side_due or out.inactivity_changed
                or out.dates_changed):
            return  # nothing to arm or record (most email_sent messages: the first starts a clock)
        if out.touched:
            enrollments, priority_of = state.enrollments, self.engine.priority_of
            for ekey in sorted(out.touched):
                e = enrollments.get(ekey)
                if e is not None and e.status == ACTIVE and e.due is not None:
                    self._push(e.due, "timer", (ekey, e.token), priority_of(state, ekey))
        for ekey in sorted(out.side_due) if out.side_due else ():
            e = state.enrollments.get(ekey)
            if e is not None and e.side:
                self._push(max(e.side_at or self.now, self.now), "side", ekey,
                           self.engine.priority_of(state, ekey))
        if out.inactivity_changed and state.inactive_due is not None:
            self._push(state.inactive_due, "inactive", state.inactive_token)
        for key in sorted(out.dates_changed) if out.dates_changed else ():
            entry = state.dates[key]
            due = parse_time(entry["at"])
            if due is not None:
                self._push(max(due, self.now), "date", (key, entry["token"]))
        self._record(state, out)

    def _record(self, state: LeadState, out: Outcome) -> None:
        for r in out.runs:
            self.funnel.run(r.journey, r.step, r.status)
        for t in out.transitions:
            self.funnel.transition(t.journey, t.type, t.lead_id, step_from=t.step_from, stage=t.stage, rule=t.rule,
                                   facts=t.facts)
        self.stats.steps += len(out.runs)

    # -- leads ------------------------------------------------------------------------------------

    def _add_lead(self, i: int, count: int, days: int) -> LeadState:
        """Lead number i of `count`, made as in a run of all of them, its queue holding what it will do."""
        segments = self.segments
        lead_id = f"sim-{i:06d}"
        segment = segments[i % len(segments)]
        created = self.start + timedelta(seconds=int(i * 86400 / max(count, 1)))
        lead = {"id": lead_id, "segment": segment, "consent": {"email": True}, "score": 10, "grade": "C",
                "lifecycle_stage": "lead", "attributes": {}, "interests": {"countries": [], "topics": []},
                "counters": {"opens_7d": 0, "opens_14d": 0, "opens_30d": 0, "clicks_7d": 0, "clicks_30d": 0,
                             "downloads": 0, "high_intent_views": 0, "pricing_views": 0, "interactions_24h": 0,
                             "days_since_engagement": 0}}
        state = LeadState(lead_id=lead_id, lead=lead)
        # Seeded by text (hashed with SHA-512 by `random`, not by Python's per-process hash).
        self.rng = random.Random(f"{self.seed}:{lead_id}")
        self.now, self.queue = self.start, []
        self._message(created, "lead_created")
        self._plan_actions(lead_id, created, days)
        return state

    def _plan_actions(self, lead_id: str, created: datetime, days: int) -> None:
        rng = self.rng
        horizon = days * 86400

        def when() -> datetime:
            return created + timedelta(seconds=rng.randrange(3600, max(horizon, 7200)))

        if rng.random() < self._action("download"):
            self._message(when(), "resource_downloaded", {"resource": "guide", "category": "country"})
        if rng.random() < self._action("webinar"):
            at = when()
            webinar, starts = f"w-{at.date().isoformat()}", at + timedelta(days=5)
            self._message(at, "webinar_registered", {"webinar_id": webinar, "starts_at": iso(starts)})
            if rng.random() < self._action("attend"):
                self._message(starts + timedelta(minutes=5), "webinar_attended", {"webinar_id": webinar})
        if rng.random() < self._action("trial"):
            at = when()
            self._message(at, "trial_started", {"ends_at": iso(at + timedelta(days=14))})
            if rng.random() < self._action("trial_convert"):
                self._message(at + timedelta(days=13, hours=rng.randrange(0, 48)), "subscribed",
                              {"plan": "standard"})
        if rng.random() < self._action("checkout"):
            self._message(when(), "checkout_started", {"cart_id": f"c-{lead_id}"})
        if rng.random() < self._action("assessment"):
            self._message(when(), "assessment_completed", {"assessment": "points"})
        weeks = days / 7
        for _ in range(int(weeks * self._action("page_views_per_week") + rng.random())):
            self._message(when(), "page_viewed", {"category": rng.choice(PAGE_CATEGORIES)})

    def _apply_counters(self, state: LeadState, etype: str, props: JsonMapping) -> None:
        """What the event changes in the simulated lead (scoring's part); the types it reads are _COUNTED."""
        c = state.lead.setdefault("counters", {})
        if etype == "email_opened":
            for k in ("opens_7d", "opens_14d", "opens_30d"):
                c[k] = c.get(k, 0) + 1
        elif etype == "email_clicked":
            c["clicks_7d"] = c.get("clicks_7d", 0) + 1
            c["clicks_30d"] = c.get("clicks_30d", 0) + 1
        elif etype == "resource_downloaded":
            c["downloads"] = c.get("downloads", 0) + 1
        elif etype == "page_viewed":
            cat = props.get("category")
            if cat == "high_intent":
                c["high_intent_views"] = c.get("high_intent_views", 0) + 1
            if cat == "pricing":
                c["pricing_views"] = c.get("pricing_views", 0) + 1
        elif etype in ("subscribed", "opportunity_won"):
            state.lead["lifecycle_stage"] = "customer"
        elif etype == "unsubscribed":
            state.lead["consent"] = {"email": False}

    # -- effects ----------------------------------------------------------------------------------

    def _drive(self, state: LeadState, ekey: str, side: bool) -> None:
        out = Outcome()
        while True:
            effect = self.engine.next_effect(state, ekey, self.now, out, side=side)
            if effect is None:
                break
            status, message_id = "done", ""
            if effect.kind == "send":
                status = "sent" if (state.lead.get("consent") or {}).get("email", True) else "suppressed"
                if status == "sent":
                    self.stats.sends += 1
                    assert isinstance(effect.payload, SendPayload)
                    message_id = f"m-{effect.dedupe_key}"
                    self._behave(state, effect.payload, message_id)
            self.engine.complete(state, effect, self.now, out, status=status, message_id=message_id)
        self._arm(state, out)

    def _behave(self, state: LeadState, payload: SendPayload, message_id: str) -> None:
        segment = str(state.lead.get("segment") or "")
        stage = payload.context.get("stage")
        rng = self.rng
        # As messaging's feedback: every email event names its message (what analytics counts once).
        tag = {"message_id": message_id, "journey": payload.journey, "step": payload.step}
        # What messaging reports for every delivered email (it starts the "no opens" clock).
        self._message(self.now, "email_sent", tag)
        if rng.random() >= self._rate(segment, stage, "open"):
            return
        opened = self.now + timedelta(seconds=rng.randrange(600, 36 * 3600))
        self._message(opened, "email_opened", tag)
        if rng.random() >= self._rate(segment, stage, "click"):
            if rng.random() < self._action("unsubscribe"):
                self._message(opened + timedelta(minutes=2), "unsubscribed", tag)
            return
        clicked = opened + timedelta(seconds=rng.randrange(30, 1800))
        self._message(clicked, "email_clicked", tag)
        if rng.random() < self._rate(segment, stage, "convert"):
            self._message(clicked + timedelta(minutes=20), "subscribed", tag)

    # -- run --------------------------------------------------------------------------------------

    def run(self, leads: int, days: int, *, workers: int = 1) -> JsonObject:
        """Run `leads` leads for `days` days; with workers > 1, in that many processes (the same report)."""
        if not 0 < leads <= MAX_LEADS:
            raise SimulationError(f"leads must be between 1 and {MAX_LEADS}")
        if not 0 < days <= MAX_DAYS:
            raise SimulationError(f"days must be between 1 and {MAX_DAYS}")
        if not 0 < workers <= MAX_WORKERS:
            raise SimulationError(f"workers must be between 1 and {MAX_WORKERS}")
        started, cpu = time.perf_counter(), time.process_time()
        workers = min(workers, leads)
        if workers == 1:
            self.run_shard(leads, days)
        else:
            self._run_in_workers(leads, days, workers)
            self.cpu_seconds += time.process_time() - cpu
        wall = time.perf_counter() - started
        report = self.funnel.report(self.registry.published_map())
        return {"leads": leads, "days": days, "journeys": report, "totals": totals(report),
                "engine": {"steps": self.stats.steps, "messages": self.stats.messages, "timers": self.stats.timers,
                           "sends": self.stats.sends, "wall_seconds": round(wall, 3)}}

    def _run_in_workers(self, leads: int, days: int, workers: int) -> None:
        """One process per shard, each handing its result back over a pipe of its own; merged in shard
        order, so the report is the same whatever the split. Not a ProcessPoolExecutor: CPython 3.11's
        pool starts workers as jobs are submitted, and a worker dying meanwhile either made its manager
        thread iterate a dict the submitting thread was growing ("dictionary changed size during
        iteration", bpo-43498) or left a late worker unterminated, the shutdown then waiting forever
        (both seen in CI). Here every process is started before any result is awaited, and a death reads
        as end of file on that process's pipe."""
        ctx = _worker_context()
        started: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        try:
            for i in range(workers):
                job = _Shard(self.journeys, self.settings, self.behaviour, self.seed, self.start, leads, days, i,
                             workers)
                reader, writer = ctx.Pipe(duplex=False)
                process: multiprocessing.process.BaseProcess = ctx.Process(
                    target=_shard_main, args=(job, writer), name=f"simulation-{i}", daemon=True)
                try:
                    process.start()
                except (BrokenPipeError, ConnectionResetError):
                    # It died reading its job, while this process was still writing it (a job is larger
                    # than a pipe's buffer): the start itself fails, with no exit code to read.
                    reader.close()
                    raise SimulationWorkerDied(f"simulation worker {i} of {workers} died as it started") from None
                finally:
                    writer.close()  # the child's copy is the only one left: its death ends the pipe
                started.append((process, reader))
            for i, (process, reader) in enumerate(started):
                try:
                    ok, payload = reader.recv()
                except EOFError:
                    process.join(5)
                    raise SimulationWorkerDied(
                        f"simulation worker {i} of {workers} died (exit code {process.exitcode})") from None
                if not ok:
                    raise payload
                self.funnel.merge(payload.funnel)
                self.stats.add(payload.stats)
                self.enrolments.extend(payload.enrolments)
                self.cpu_seconds += payload.cpu_seconds
        finally:
            for process, reader in started:
                reader.close()
                if process.is_alive():
                    process.kill()  # after a failure: the others' work is no longer wanted
                process.join()

    def run_shard(self, leads: int, days: int, shard: int = 0, shards: int = 1, *, keep_states: bool = True) -> None:
        """Run lead number shard, shard + shards, ... of `leads` here, adding to the funnel and stats;
        with `keep_states`, each lead's state is kept in `states` after its run.

        One lead after the other, each from its creation to the end: leads share nothing, so a lead's
        story is the same as in one queue of every lead's items (the golden test holds both to the same
        stories), and a lead's few hundred items and its state stay in the CPU's caches while it runs.
        One queue of 10,000 leads' items took a third more CPU: each item touched a state and a part of
        the queue that the thousands of items handled since had pushed out of the caches."""
        cpu = time.process_time()
        end = self.start + timedelta(days=days)
        for i in range(shard, leads, shards):
            state = self._add_lead(i, leads, days)
            if keep_states:
                self.states[state.lead_id] = state
            self._run_lead(state, end)
            self.enrolments.extend((e.entered_at, e.journey) for e in state.enrollments.values())
        self.cpu_seconds += time.process_time() - cpu

    def _run_lead(self, state: LeadState, end: datetime) -> None:
        """Handle the lead's queue in order until it is empty or its next item is past `end`."""
        # The loop's own lookups made once (it runs for every planned event, timer and reply).
        queue, pop, stats, engine = self.queue, heapq.heappop, self.stats, self.engine
        arm, drive, engagement = self._arm, self._drive, self.funnel.engagement
        lead_id = state.lead_id
        now = self.now
        now_text: str | None = None  # the text of now, written when a message first needs it
        while queue and queue[0][0] <= end:
            at, _prio, seq, kind, data = pop(queue)
            if at > now:
                self.now = now = at
                now_text = None
            if kind == "msg":
                stats.messages += 1
                etype, props = data["type"], data["properties"]
                if etype in _COUNTED:  # (not email_sent, half of all messages)
                    self._apply_counters(state, etype, props)
                if etype in ("email_opened", "email_clicked"):
                    engagement(props["journey"], props["step"], etype)
                # The simulated lead is the state's own (its counters move above): no snapshot to carry.
                # The time is carried, as on the bus (what analytics reads of a simulated run); the
                # engine reads it back from times' memory of what it wrote.
                if now_text is None:
                    now_text = iso(now)
                message = BusMessage(id=f"sim-{seq}", lead_id=lead_id, type=etype, properties=props,
                                     occurred_at=now_text)
                arm(state, engine.on_message(state, message, now))
                due = [k for k, e in state.enrollments.items() if e.status == ACTIVE and e.due and e.due <= now]
                if due:  # (seldom: most messages move no enrolment to now)
                    due.sort()
                    for ekey in due:
                        drive(state, ekey, side=False)
            elif kind == "timer":
                ekey, token = data
                e = state.enrollments.get(ekey)
                if e is None or e.token != token or e.status != ACTIVE:
                    continue
                stats.timers += 1
                drive(state, ekey, side=False)
            elif kind == "side":
                drive(state, data, side=True)
            # A lead timer armed again since (each engagement moves the inactivity and quiet-period
            # clocks: most of these) is dropped here as the service drops a stale token; the engine
            # would find the same and do nothing.
            elif kind == "inactive":
                if data == state.inactive_token:
                    arm(state, engine.inactivity_due(state, data, now))
            elif kind == "date":
                entry = state.dates.get(data[0])
                if entry and entry.get("token") == data[1] and not entry.get("fired"):
                    arm(state, engine.date_due(state, data[0], data[1], now))


@dataclass(frozen=True)
class _Shard:
    """What a worker needs to run one shard of leads (pickled to it)."""
    journeys: dict[str, Journey]
    settings: PlaybookSettings
    behaviour: JsonObject
    seed: int
    start: datetime
    leads: int
    days: int
    shard: int
    shards: int


@dataclass(frozen=True)
class _ShardResult:
    funnel: Funnel
    stats: Stats
    enrolments: list[tuple[datetime, str]]
    cpu_seconds: float


def _run_shard(job: _Shard) -> _ShardResult:
    # A worker process runs one shard and exits: no cyclic collector in it. A lead's state holds no
    # reference cycle (refcounting frees what a run drops), but the collector walks every live object
    # each time the young generations have filled up enough: with thousands of leads' states alive, that
    # walk was ~3% of a worker's CPU for nothing to collect.
    gc.disable()
    sim = Simulation(job.journeys, settings=job.settings, behaviour=job.behaviour, seed=job.seed, start=job.start)
    # Nor does it keep a lead's state once the lead is done (the funnel, stats and enrolments are what
    # it hands back): the next lead's objects then reuse the memory just freed, still in the CPU's
    # caches, rather than fresh memory (about a tenth of a 3,000-lead shard's CPU, alternated).
    sim.run_shard(job.leads, job.days, job.shard, job.shards, keep_states=False)
    return _ShardResult(sim.funnel, sim.stats, sim.enrolments, sim.cpu_seconds)


def _shard_main(job: _Shard, conn: Connection) -> None:
    """A worker process's body: its shard's result, or the exception that stopped it, to the parent."""
    try:
        result: tuple[bool, object] = (True, _run_shard(job))
    except Exception as exc:  # handed back whole, raised again by the parent as pool.map did
        result = (False, exc)
    conn.send(result)
    conn.close()


def _worker_context() -> multiprocessing.context.ForkServerContext:
    """Workers forked from a fork server that has imported the simulator: not forked from the caller,
    which may be the journeys service with gRPC's threads running (a fork copies their locks as held),
    and without spawn's fresh interpreter and imports for every run."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def warm() -> bool:
    """Start the workers' fork server now, when more than one worker would run (idempotent); whether it
    answered. Its start, a fresh interpreter importing the simulator, is about 0.4 s of a first parallel
    run; the journeys service calls this as it starts, so a console's first simulation does not wait."""
    if default_workers(PARALLEL_FROM_LEADS) == 1:
        return False
    # One worker that does nothing: the server answers a fork only once it has imported the simulator.
    process = _worker_context().Process(target=_nothing, name="simulation-warm", daemon=True)
    try:
        process.start()
        process.join()
    except OSError:  # the first parallel run tries again, and answers with what stops it
        log.warning("simulation workers' fork server did not start", exc_info=True)
        return False
    return process.exitcode == 0


def _nothing() -> None:
    """The body of warm()'s worker."""


def default_workers(leads: int) -> int:
    """The processes a run of `leads` leads uses by default: one per core, from PARALLEL_FROM_LEADS."""
    if leads < PARALLEL_FROM_LEADS:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


def simulate(*, journeys: Sequence[str] | None = None, leads: int, days: int, seed: int = 1,
             behaviour: JsonMapping | None = None,
             definitions: Mapping[str, Journey] | None = None, workers: int | None = None) -> JsonObject:
    """Run the named journeys (default: the whole playbook) and return the funnel report; `workers`
    processes (default: default_workers), which changes how fast, never what."""
    available = dict(definitions) if definitions is not None else load_playbook()
    chosen = list(journeys) if journeys else list(available)
    unknown = [k for k in chosen if k not in available]
    if unknown:
        raise SimulationError(f"unknown journeys: {', '.join(unknown)}")
    problems = check_behaviour(behaviour or {}, segments_of(available[k] for k in chosen))
    if problems:
        raise SimulationError("; ".join(problems), problems)
    sim = Simulation({k: available[k] for k in chosen}, behaviour=behaviour, seed=seed)
    report = sim.run(leads, days, workers=default_workers(leads) if workers is None else workers)
    report["seed"] = seed
    report["journey_keys"] = chosen
    return report
