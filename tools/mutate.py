"""`make mutate`: mutation testing over the modules that carry the product's promises (mutmut 3).

Runs mutmut module by module (the list is `[tool.mutmut] only_mutate` in pyproject.toml; each mutant runs
only the tests of the fast selection there that reach the function it changes), at low CPU priority and
within a time budget, then prints per-module figures on stderr and one JSON line on stdout:

    {"mutants": N, "killed": K, "mutation_score": K / (N - equivalent - not_checked), ...}

`killed` counts mutants a test failed on (a timeout counts: the test did not pass). `no_tests` are
mutants no test of the selection reaches (they count as not killed). `not_checked` are mutants the
budget left unrun (reported, and kept out of the score's denominator). Survivors judged equivalent are
listed, with why, in docs/TESTING.md (lines starting "- `<mutant name>`") and are kept out of it too.

Usage: python tools/mutate.py [--minutes 55] [--children 2] [--fresh | --resume] [module.py ...]

`--resume` runs only the mutants of the last run that were not killed (survivors, no tests, not yet
checked): after adding tests, or to finish a run the budget stopped. Killed mutants keep their verdict.
`--sample N` runs every Nth mutant of each module (by name, so the same ones each time): an estimate of
a large module's score when a full run does not fit the time; the figures printed are then those of the
sample alone (with `--report-only --sample N` too).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KILLED = {1, 3, 24, 36, 37, 152, 255, -24, -9, -11}   # mutmut: killed, timeouts, segfaults, type check
SURVIVED = {0}
NO_TESTS = {5, 33}
EQUIVALENT = re.compile(r"^- `([\w.ǁ]+__mutmut_\d+)`", re.MULTILINE)


def modules_from_config() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return list(config["only_mutate"])


def dotted(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def equivalents() -> set[str]:
    doc = ROOT / "docs" / "TESTING.md"
    return set(EQUIVALENT.findall(doc.read_text())) if doc.exists() else set()


def selected(module: str, *, resume: bool, sample: int) -> list[str] | None:
    """Mutant names to run (None: all of the module's)."""
    meta = ROOT / "mutants" / f"{module}.meta"
    if not meta.exists() or not (resume or sample > 1):
        return None
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    names = sorted(codes)[::sample] if sample > 1 else sorted(codes)
    return [name for name in names if not resume or codes[name] not in KILLED]


def run_module(module: str, *, seconds: float, children: int, log: Path, names: list[str] | None = None) -> bool:
    """mutmut over one module's mutants (or the given ones); False when the budget ran out first."""
    cmd = ["nice", "-n", "10", str(Path(sys.executable).with_name("mutmut")), "run", "--max-children",
           str(children), *(names or [f"{dotted(module)}.*"])]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=max(seconds, 1))
            return True
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return False


def figures(module: str, equivalent: set[str], sample: int = 1) -> dict[str, int]:
    """The module's verdicts; with `sample` > 1, those of its sample only (every Nth mutant by name, as
    `selected` runs them), so a sampled run's figures are not mixed with verdicts of earlier runs."""
    meta = ROOT / "mutants" / f"{module}.meta"
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    if sample > 1:
        codes = {name: codes[name] for name in sorted(codes)[::sample]}
    out = {"mutants": len(codes), "killed": 0, "survived": 0, "no_tests": 0, "not_checked": 0, "equivalent": 0,
           "other": 0}
    for name, code in codes.items():
        if name in equivalent and code in SURVIVED:
            out["equivalent"] += 1
        elif code is None:
            out["not_checked"] += 1
        elif code in KILLED:
            out["killed"] += 1
        elif code in SURVIVED:
            out["survived"] += 1
        elif code in NO_TESTS:
            out["no_tests"] += 1
        else:
            out["other"] += 1   # skipped or suspicious: counted as not killed
    return out


def score(f: dict[str, int]) -> float | None:
    judged = f["mutants"] - f["equivalent"] - f["not_checked"]
    return round(f["killed"] / judged, 3) if judged else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="module paths (default: every module in only_mutate)")
    parser.add_argument("--minutes", type=float, default=55.0, help="time budget for the whole run")
    parser.add_argument("--children", type=int, default=2, help="mutants run in parallel")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results (rm -rf mutants/)")
    parser.add_argument("--resume", action="store_true", help="run only the mutants not killed last time")
    parser.add_argument("--sample", type=int, default=1, help="run every Nth mutant of each module")
    parser.add_argument("--report-only", action="store_true", help="print the figures of the last run")
    args = parser.parse_args(argv)
    modules = args.modules or modules_from_config()
    if args.fresh and (ROOT / "mutants").exists():
        shutil.rmtree(ROOT / "mutants")
    deadline = time.monotonic() + args.minutes * 60
    logs = ROOT / "mutants-logs"
    logs.mkdir(exist_ok=True)
    unfinished: list[str] = []
    if not args.report_only:
        for module in modules:
            left = deadline - time.monotonic()
            started = time.monotonic()
            names = selected(module, resume=args.resume, sample=args.sample)
            if names == []:
                continue
            done = left > 0 and run_module(module, seconds=left, children=args.children,
                                           log=logs / f"{dotted(module)}.log", names=names)
            print(f"mutate: {module} {'done' if done else 'stopped by the time budget'} "
                  f"in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
            if not done:
                unfinished.append(module)
    equivalent = equivalents()
    per_module = {m: figures(m, equivalent, args.sample) for m in modules}
    total = {k: sum(f[k] for f in per_module.values()) for k in next(iter(per_module.values()))}
    for module, f in per_module.items():
        print(f"  {module:38} score {score(f)!s:6} " + " ".join(f"{k}={v}" for k, v in f.items()), file=sys.stderr)
    print(json.dumps({**total, "mutation_score": score(total), "unfinished": unfinished,
                      "modules": {m: {**f, "mutation_score": score(f)} for m, f in per_module.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
