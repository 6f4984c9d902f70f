"""A bad data file fails the start of its service, and the refusal lists every problem of the file.

Each case runs `python -m services.<name>` from a copy of the code whose data file is broken in two
places (the shipped files stay as they are), and reads both problems in what the process printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from nurture.settings import Settings, to_environ

ROOT = Path(__file__).resolve().parents[3]


def _edit_yaml(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        doc = yaml.safe_load(path.read_text())
        change(doc)
        path.write_text(yaml.safe_dump(doc))
    return edit


def _append(text: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        path.write_text(path.read_text() + text)
    return edit


def _sync(doc: dict) -> None:
    doc["max_clock_skew_s"] = -1
    del doc["deal_stages"]


def _model(doc: dict) -> None:
    doc["version"] = "three"
    doc["behaviour"][0]["points"] = "many"


def _settings(doc: dict) -> None:
    doc["budget"]["window"] = "soon"
    doc["clocks"][0]["days"] = [0]


def _calendar(doc: dict) -> None:
    doc["campaigns"][0]["at"] = "soon"
    doc["campaigns"][1]["event"] = "Not An Event"


def _catalog(doc: dict) -> None:
    doc["sender"]["adress"] = "x@example.com"
    first = next(iter(doc["templates"]))
    doc["templates"][first]["points"].append({"Label": "text"})


CASES = [
    ("crm_sync", "services/crm_sync/data/sync.yaml", _edit_yaml(_sync),
     ["max_clock_skew_s: must be a number of seconds, 0 or more", "deal_stages: field required"]),
    ("scoring", "services/scoring/data/model.yaml", _edit_yaml(_model),
     ["version: input should be a valid integer", "behaviour[0] ", ": points must be an integer"]),
    ("journeys", "services/journeys/data/playbook/_settings.yaml", _edit_yaml(_settings),
     ["_settings.yaml budget.window: must be a duration", "_settings.yaml clocks[0].days: must be a list"]),
    ("journeys", "services/journeys/data/playbook/_calendar.yaml", _edit_yaml(_calendar),
     ["_calendar.yaml campaigns[0].at: must be an RFC 3339 time",
      "_calendar.yaml campaigns[1].event: must be an event type"]),
    ("messaging", "services/messaging/data/policy.yaml", _append("cap_per_day: 0\nburst: 3\n"),
     ["cap_per_day: must be a whole number of at least 1", "burst: not a policy setting"]),
    ("messaging", "services/messaging/data/audiences.yaml", _append("  - {name: '', when: [1]}\n"),
     ["ad_suppression[3].name: string should have at least 1 character",
      "ad_suppression[3].when: input should be a valid dictionary"]),
    ("messaging", "services/messaging/data/personalization.yaml", _append("  partner: [{stage: x}]\nextra: 1\n"),
     ["by_lifecycle.partner[0].journey: field required", "extra: unknown key"]),
    ("messaging", "services/messaging/data/templates/catalog.yaml", _edit_yaml(_catalog),
     ["sender.adress: unknown key", "must be text (quote a point containing ': ')"]),
]


@pytest.mark.parametrize(("service", "data_file", "spoil", "problems"), CASES,
                         ids=[f"{c[0]}-{Path(c[1]).name}" for c in CASES])
def test_a_bad_data_file_fails_the_start_listing_every_problem(
        tmp_path: Path, settings: Settings, service: str, data_file: str, spoil: Callable[[Path], None],
        problems: list[str]) -> None:
    code = tmp_path / "code"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("nurture", "services"):
        shutil.copytree(ROOT / package, code / package, ignore=ignore)
    spoil(code / data_file)
    env = {**os.environ, **to_environ(settings), "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-m", f"services.{service}"], cwd=code, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0, done.stderr[-2000:]
    assert "DataFileError" in done.stderr or "DefinitionError" in done.stderr or "InvalidRule" in done.stderr, \
        done.stderr[-2000:]
    for problem in problems:
        assert problem in done.stderr, (problem, done.stderr[-2000:])
