"""A whole-playbook simulation compared with a recorded golden file: the funnel report and, for every
lead, a digest of its story (each step run with its time, status and dedupe key, each explained
transition, where each enrolment ends). The simulator and the engine are made faster without
changing a decision; a change of any lead's steps shows here, naming the leads whose story moved.

After an intended change of behaviour: `UPDATE_GOLDEN=1 .venv/bin/python -m pytest
tests/unit/journeys/test_simulation_golden.py`, then read the report's diff before committing it."""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from services.journeys.domain.definitions import load_playbook
from services.journeys.domain.state import LeadState, Outcome
from services.journeys.simulation import Simulation

GOLDEN = Path(__file__).with_name("golden") / "simulation_200_leads_60_days.json"


class Recording(Simulation):
    """The simulator, keeping every lead's step runs and transitions in the order they happened."""

    def __init__(self) -> None:
        super().__init__(load_playbook(), seed=11)
        self.stories: dict[str, list[list[Any]]] = defaultdict(list)

    def _record(self, state: LeadState, out: Outcome) -> None:
        story = self.stories[state.lead_id]
        story.extend([r.ekey, r.step, r.status, r.at.isoformat(), r.dedupe_key, r.stage, r.message_id, r.detail]
                     for r in out.runs)
        story.extend([t.ekey, t.type, t.at.isoformat(), t.summary, t.step_from, t.step_to, t.stage, t.rule,
                      json.dumps(t.facts, sort_keys=True, default=str)] for t in out.transitions)
        super()._record(state, out)


def digests(sim: Recording) -> dict[str, str]:
    """A digest of each lead's story and where its enrolments end."""
    leads = {}
    for lead_id, state in sorted(sim.states.items()):
        ends = sorted([e.ekey, e.status, e.step, e.outcome, e.token] for e in state.enrollments.values())
        text = json.dumps([sim.stories[lead_id], ends], default=str)
        leads[lead_id] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return leads


def test_a_simulated_playbook_keeps_every_leads_story() -> None:
    sim = Recording()
    report = sim.run(200, 60)
    report["engine"].pop("wall_seconds")
    leads = digests(sim)
    got = {"report": report, "leads": leads}
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    expected = json.loads(GOLDEN.read_text())
    moved = sorted(k for k in expected["leads"] if leads.get(k) != expected["leads"][k])
    assert not moved, f"{len(moved)} leads' stories changed, first {moved[:5]}"
    assert got["report"] == expected["report"]
    assert report["engine"]["steps"] > 5000 and len(leads) == 200


def test_a_leads_story_does_not_depend_on_the_leads_run_beside_it() -> None:
    """Each lead draws from its own generator, so a shard of the leads (what a worker process runs)
    tells every one of its leads' stories as the whole run does."""
    expected = json.loads(GOLDEN.read_text())["leads"]
    for shard, shards in ((1, 3), (0, 7)):
        sim = Recording()
        sim.run_shard(200, 60, shard, shards)
        leads = digests(sim)
        assert sorted(leads) == [f"sim-{i:06d}" for i in range(shard, 200, shards)]
        moved = sorted(k for k in leads if leads[k] != expected[k])
        assert not moved, f"{len(moved)} leads' stories changed in shard {shard} of {shards}, first {moved[:5]}"


def test_each_lead_is_run_to_the_end_before_the_next() -> None:
    """Leads are run one after the other (what keeps a lead's state and queue in the CPU's caches while
    it runs), not interleaved in one queue of every lead's items; the stories above stay the same."""
    order: list[str] = []

    class Ordered(Recording):
        def _record(self, state: LeadState, out: Outcome) -> None:
            if not order or order[-1] != state.lead_id:
                order.append(state.lead_id)
            super()._record(state, out)

    Ordered().run_shard(30, 60)
    assert order == [f"sim-{i:06d}" for i in range(30)]
