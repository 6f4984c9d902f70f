"""Journey steps are read through their typed records everywhere but the parser (issue #14): the
count of `.get()` on a step or a part of one outside definitions.py/steps.py is 0, and the counter
does see such a read when one is written."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[3]


def _typecount() -> ModuleType:
    spec = importlib.util.spec_from_file_location("typecount", ROOT / "tools" / "typecount.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["typecount"] = module
    spec.loader.exec_module(module)
    return module


def test_the_journeys_service_reads_no_step_as_a_dict() -> None:
    table = _typecount().count()
    assert table["services/journeys"]["step .get"] == 0


def test_the_counter_sees_a_raw_step_read(tmp_path: Path) -> None:
    tc = _typecount()
    source = tmp_path / "services" / "journeys" / "domain" / "engine.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f(s, j):\n    return s.get('delay'), j.step('a').get('to'), props.get('x')\n")
    tc.ROOT = tmp_path
    assert tc.count_file(source)["step .get"] == 2
