"""A simulation split over worker processes: the same report as one process, whatever the split, and a
worker that dies fails the run instead of leaving its leads out of the report."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from typing import Any

import pytest

from services.journeys import simulate_cli
from services.journeys.domain.definitions import Journey, load_playbook
from services.journeys.simulation import (
    MAX_WORKERS,
    PARALLEL_FROM_LEADS,
    Simulation,
    SimulationError,
    SimulationWorkerDied,
    default_workers,
    simulate,
    warm,
)


def without_wall(report: dict[str, Any]) -> dict[str, Any]:
    report["engine"].pop("wall_seconds")
    return report


def test_one_process_and_several_make_the_same_report() -> None:
    behaviour = {"default": {"open": 0.5, "click": 0.4, "convert": 0.05}, "actions": {"unsubscribe": 0.02}}
    one = without_wall(simulate(leads=150, days=40, seed=9, behaviour=behaviour, workers=1))
    for workers in (2, 3):
        assert without_wall(simulate(leads=150, days=40, seed=9, behaviour=behaviour, workers=workers)) == one
    # The report is not the same whatever happens: another seed moves it.
    assert without_wall(simulate(leads=150, days=40, seed=10, behaviour=behaviour, workers=2)) != one
    assert one["engine"]["steps"] > 1000 and one["totals"]["sent"] > 0


def test_the_workers_enrolments_reach_the_caller() -> None:
    playbook = load_playbook()
    here, split = Simulation(playbook, seed=5), Simulation(playbook, seed=5)
    here.run(40, 30)
    split.run(40, 30, workers=2)
    assert not split.states  # the leads stayed in the workers
    assert sorted(split.enrolments) == sorted(here.enrolments) and here.enrolments


def test_a_shard_run_without_keeping_the_leads_states_adds_up_the_same() -> None:
    """A worker keeps no lead's state once the lead is done (its memory goes to the next lead); what it
    hands back is the same."""
    playbook = load_playbook()
    kept, dropped = Simulation(playbook, seed=3), Simulation(playbook, seed=3)
    kept.run_shard(30, 30, 1, 2)
    dropped.run_shard(30, 30, 1, 2, keep_states=False)
    assert len(kept.states) == 15 and not dropped.states
    published = kept.registry.published_map()
    assert dropped.funnel.report(published) == kept.funnel.report(published)
    assert dropped.stats == kept.stats and dropped.enrolments == kept.enrolments and kept.stats.steps > 400


def test_more_workers_than_leads_runs_each_lead_once() -> None:
    assert without_wall(simulate(leads=2, days=10, seed=4, workers=5)) == \
        without_wall(simulate(leads=2, days=10, seed=4, workers=1))


@pytest.mark.parametrize("workers", [0, -1, MAX_WORKERS + 1])
def test_a_bad_worker_count_is_refused(workers: int) -> None:
    with pytest.raises(SimulationError, match="workers must be between"):
        simulate(leads=10, days=5, workers=workers)


def test_small_runs_stay_in_the_calling_process() -> None:
    assert default_workers(PARALLEL_FROM_LEADS - 1) == 1
    assert 1 <= default_workers(PARALLEL_FROM_LEADS) <= MAX_WORKERS


def test_warming_starts_the_workers_fork_server_before_any_run() -> None:
    """What the journeys service does as it starts: with more than one core, a worker is forked (so the
    fork server is up and has imported the simulator) and nothing is left running; again is harmless."""
    if default_workers(PARALLEL_FROM_LEADS) == 1:
        assert warm() is False  # one core: runs stay in the calling process, nothing to start
        return
    assert warm() is True
    assert warm() is True
    assert not multiprocessing.active_children()
    # A run after it uses the started server and makes the same report as one process.
    assert without_wall(simulate(leads=30, days=10, seed=4, workers=2)) == \
        without_wall(simulate(leads=30, days=10, seed=4, workers=1))


@dataclasses.dataclass(frozen=True)
class _DiesInTheWorker(Journey):
    """A journey that kills the worker process unpickling it."""

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return (os._exit, (3,))


class _NotAJourney:
    """What `_FailsInTheWorker` turns into in the worker: an object the simulator cannot read."""


@dataclasses.dataclass(frozen=True)
class _FailsInTheWorker(Journey):
    """A journey that arrives in the worker process as something else, so its shard raises there."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_NotAJourney, ())


def test_a_worker_that_dies_fails_the_run() -> None:
    playbook = load_playbook()
    first = next(iter(playbook.values()))
    dying = _DiesInTheWorker(**{f.name: getattr(first, f.name) for f in dataclasses.fields(first) if f.init})
    # Each worker dies reading its job: while this process still writes the job (the start fails) or after.
    with pytest.raises(SimulationWorkerDied, match=r"worker [01] of 2 died (as it started|\(exit code 3\))"):
        Simulation({**playbook, first.key: dying}, seed=1).run(20, 10, workers=2)
    assert not multiprocessing.active_children()  # the other worker was not left running


def test_an_exception_in_a_worker_reaches_the_caller() -> None:
    playbook = load_playbook()
    first = next(iter(playbook.values()))
    failing = _FailsInTheWorker(**{f.name: getattr(first, f.name) for f in dataclasses.fields(first) if f.init})
    with pytest.raises(AttributeError, match="_NotAJourney"):
        Simulation({**playbook, first.key: failing}, seed=1).run(20, 10, workers=2)
    assert not multiprocessing.active_children()


def test_nurture_simulate_takes_a_worker_count(capsys: pytest.CaptureFixture[str]) -> None:
    reports = []
    for workers in ("1", "2"):
        assert simulate_cli.main(["--leads", "30", "--days", "8", "--seed", "2", "--workers", workers, "--json"]) == 0
        reports.append(without_wall(json.loads(capsys.readouterr().out)))
    assert reports[0] == reports[1] and reports[0]["leads"] == 30
    assert simulate_cli.main(["--leads", "30", "--workers", "0"]) == 2
    assert "workers must be between 1 and" in capsys.readouterr().err
