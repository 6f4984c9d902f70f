"""The funnel report shared by simulation and analytics: per step entered, sent, suppressed, opened,
clicked, converted, exited; per stage entered, conversion to the next stage and median time in stage.

Both callers feed the same three record streams (step runs, transitions, engagement events tagged
with journey and step), so a simulated funnel and a measured one are directly comparable."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from nurture.jsontypes import JsonMapping, JsonObject
from services.journeys.domain.definitions import Journey

STEP_MEASURES = ("entered", "sent", "suppressed", "opened", "clicked", "converted", "exited")
_ENGAGEMENT_MEASURES = {"email_opened": "opened", "email_clicked": "clicked"}  # event type -> step measure


def _no_counts() -> dict[str, int]:
    return dict.fromkeys(STEP_MEASURES, 0)


def _step_counts() -> defaultdict[str, dict[str, int]]:
    return defaultdict(_no_counts)


# Named factories, not lambdas: a funnel is pickled back from a simulation's worker processes.
@dataclass
class _JourneyTally:
    steps: dict[str, dict[str, int]] = field(default_factory=_step_counts)
    stage_leads: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    stage_hours: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    enrolled: int = 0
    goals: int = 0
    completed: int = 0
    exited: int = 0
    exit_reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Funnel:
    """Accumulates records; `report()` renders the numbers."""

    def __init__(self) -> None:
        self._j: dict[str, _JourneyTally] = defaultdict(_JourneyTally)

    def run(self, journey: str, step: str, status: str, n: int = 1) -> None:
        """`n` step runs of one status (the analytics count them in SQL, the simulator one by one)."""
        tally = self._j[journey].steps[step]
        if status == "deferred":
            return
        tally["entered"] += n
        if status in ("sent", "scheduled"):
            tally["sent"] += n
        elif status in ("suppressed", "failed"):
            tally["suppressed"] += n

    def counted(self, journey: str, kind: str, n: int) -> None:
        """`n` transitions of a kind that only counts (entered, completed)."""
        t = self._j[journey]
        if kind == "entered":
            t.enrolled += n
        elif kind == "completed":
            t.completed += n

    def goals(self, journey: str, step: str | None, n: int) -> None:
        """`n` goals reached, credited to `step` (the last email sent, else the step reached from)."""
        t = self._j[journey]
        t.goals += n
        if step:
            t.steps[step]["converted"] += n

    def exits(self, journey: str, step_from: str | None, reason: str, n: int) -> None:
        t = self._j[journey]
        t.exited += n
        t.exit_reasons[reason] += n
        if step_from:
            t.steps[step_from]["exited"] += n

    def transition(self, journey: str, kind: str, lead_id: str, *, step_from: str | None, stage: str | None,
                   rule: str | None, facts: JsonMapping, last_sent: str | None = None) -> None:
        t = self._j[journey]
        if kind in ("entered", "completed"):
            self.counted(journey, kind, 1)
        elif kind == "stage" and stage:
            t.stage_leads[stage].add(lead_id)
            prev, hours = facts.get("from"), facts.get("hours_in_previous")
            if prev and isinstance(hours, int | float):
                t.stage_hours[str(prev)].append(float(hours))
        elif kind == "goal":
            last_sent = last_sent or facts.get("last_sent")
            self.goals(journey, str(last_sent or step_from) if last_sent or step_from else None, 1)
        elif kind == "exited":
            self.exits(journey, step_from, exit_reason(rule, facts), 1)

    def merge(self, other: Funnel) -> None:
        """Add another funnel's records: a simulation's shards, over disjoint leads, make one report
        (counts add, a stage's leads unite, the hours in a stage join the same median)."""
        for key, theirs in other._j.items():
            mine = self._j[key]
            for step, counts in theirs.steps.items():
                into = mine.steps[step]
                for measure, n in counts.items():
                    into[measure] += n
            for stage, leads in theirs.stage_leads.items():
                mine.stage_leads[stage] |= leads
            for stage, hours in theirs.stage_hours.items():
                mine.stage_hours[stage].extend(hours)
            mine.enrolled += theirs.enrolled
            mine.goals += theirs.goals
            mine.completed += theirs.completed
            mine.exited += theirs.exited
            for reason, n in theirs.exit_reasons.items():
                mine.exit_reasons[reason] += n

    def engagement(self, journey: str, step: str, kind: str, n: int = 1) -> None:
        measure = _ENGAGEMENT_MEASURES.get(kind)
        if measure:
            self._j[journey].steps[step][measure] += n

    def report(self, journeys: Mapping[str, Journey]) -> JsonObject:
        out: JsonObject = {}
        for key in sorted(self._j):
            t = self._j[key]
            j = journeys.get(key)
            order = list(j.steps) if j else sorted(t.steps)
            steps = [{"step": s, **t.steps[s]} for s in order if s in t.steps]
            stages = []
            stage_ids = list(j.stages) if j else sorted(t.stage_leads)
            for i, stage in enumerate(stage_ids):
                entered = len(t.stage_leads.get(stage, ()))
                nxt = stage_ids[i + 1] if i + 1 < len(stage_ids) else None
                reached = len(t.stage_leads.get(stage, set()) & t.stage_leads.get(nxt, set())) if nxt else None
                hours = t.stage_hours.get(stage, [])
                stages.append({
                    "stage": stage, "entered": entered, "next": nxt, "to_next": reached,
                    "conversion": round(reached / entered, 4) if entered and reached is not None else None,
                    "median_hours": round(statistics.median(hours), 2) if hours else None,
                })
            out[key] = {"enrolled": t.enrolled, "goals": t.goals, "completed": t.completed, "exited": t.exited,
                        "exit_reasons": dict(sorted(t.exit_reasons.items())), "steps": steps, "stages": stages}
        return out


def exit_reason(rule: str | None, facts: JsonMapping) -> str:
    """The reason an exit is counted under (`exit_reasons`): its rule, else the reason its facts give."""
    return str(rule or facts.get("reason") or "exit")


def totals(report: JsonMapping) -> dict[str, int]:
    """Sums over every journey's steps."""
    sums = dict.fromkeys(STEP_MEASURES, 0)
    for j in report.values():
        for s in j["steps"]:
            for m in STEP_MEASURES:
                sums[m] += int(s[m])
    return sums


def feed(funnel: Funnel, runs: Iterable[JsonMapping], transitions: Iterable[JsonMapping],
         engagements: Iterable[JsonMapping]) -> Funnel:
    """Feed rows (dicts with the StepRun/Transition field names) into a funnel."""
    for r in runs:
        funnel.run(r["journey"], r["step"], r["status"])
    for tr in transitions:
        funnel.transition(tr["journey"], tr["type"], tr["lead_id"], step_from=tr.get("step_from"),
                          stage=tr.get("stage"), rule=tr.get("rule"), facts=tr.get("facts") or {},
                          last_sent=tr.get("last_sent"))
    for ev in engagements:
        funnel.engagement(ev["journey"], ev["step"], ev["type"])
    return funnel
