"""What one record adds to a journey's step counters: the cell it is counted in, by journey, UTC day,
step, measure and reason. The funnel (domain.funnel) is fed from these cells as it is fed from the
records, so the counters and a recount of the records give one report.

Measures: `run` (reason: the run's status), `engagement` (reason: the event type), `entered` and
`completed` (journey-wide), `exited` (step: the step it left from; reason: exit_reason), `goal` (step:
the step the goal is credited to, the last email sent or the step it was reached from)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import date, datetime
from typing import NamedTuple

from nurture.jsontypes import JsonMapping
from services.journeys.domain.funnel import Funnel, exit_reason


class Cell(NamedTuple):
    """Where a record is counted: its journey, UTC day, step, measure and reason."""

    journey: str
    day: date
    step: str
    measure: str
    reason: str


COUNTED_TRANSITIONS = ("entered", "completed", "exited", "goal")


class Tally:
    """Counts by cell, added to by records (or taken from, for an erased lead's records)."""

    def __init__(self) -> None:
        self.cells: dict[Cell, int] = defaultdict(int)

    def run(self, journey: str, at: datetime, step: str, status: str, sign: int = 1) -> None:
        self.cells[Cell(journey, at.date(), step, "run", status)] += sign

    def engagement(self, journey: str, at: datetime, step: str, kind: str, sign: int = 1) -> None:
        self.cells[Cell(journey, at.date(), step, "engagement", kind)] += sign

    def transition(self, journey: str, at: datetime, kind: str, *, step_from: str | None, rule: str | None,
                   facts: JsonMapping, sign: int = 1) -> None:
        day = at.date()
        if kind in ("entered", "completed"):
            self.cells[Cell(journey, day, "", kind, "")] += sign
        elif kind == "exited":
            self.cells[Cell(journey, day, step_from or "", "exited", exit_reason(rule, facts))] += sign
        elif kind == "goal":
            self.cells[Cell(journey, day, str(facts.get("last_sent") or step_from or ""), "goal", "")] += sign

    def add(self, other: Tally) -> None:
        for cell, n in other.cells.items():
            self.cells[cell] += n

    def nonzero(self) -> dict[Cell, int]:
        return {cell: n for cell, n in sorted(self.cells.items()) if n}


def feed(funnel: Funnel, journey: str, counts: Mapping[tuple[str, str, str], int]) -> None:
    """Feed one journey's counts by (step, measure, reason) into the funnel, as its records would be."""
    for (step, measure, reason), n in sorted(counts.items()):
        if not n:
            continue  # a cell emptied by an erasure: no record behind it
        if measure == "run":
            funnel.run(journey, step, reason, n)
        elif measure == "engagement":
            funnel.engagement(journey, step, reason, n)
        elif measure in ("entered", "completed"):
            funnel.counted(journey, measure, n)
        elif measure == "exited":
            funnel.exits(journey, step or None, reason, n)
        elif measure == "goal":
            funnel.goals(journey, step or None, n)
