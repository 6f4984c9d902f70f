"""`nurture simulate`: run journeys for synthetic leads in virtual time and print the funnel.

    nurture simulate --leads 1000 --days 60 --seed 7 [--journeys skilled_professional,triggers]
                     [--behaviour '{"default": {"open": 0.4}}' | --behaviour @behaviour.json] [--json]
                     [--workers N]

Runs on this machine with the playbook files (no service, no Redis, no SQL); deterministic per seed.
From 1,000 leads the leads are split over one worker process per core (--workers N to choose): the
report is the same whatever the split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nurture.jsontypes import JsonObject
from services.journeys.domain.definitions import DefinitionError
from services.journeys.simulation import SimulationError, simulate


def _behaviour(raw: str | None) -> JsonObject:
    if not raw:
        return {}
    text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("behaviour must be a JSON object")
    return value


def _table(report: JsonObject) -> str:
    lines = [f"{report['leads']} leads, {report['days']} days, seed {report['seed']}: "
             f"{report['engine']['steps']} steps in {report['engine']['wall_seconds']} s"]
    for key, j in report["journeys"].items():
        lines.append(f"\n{key}: enrolled {j['enrolled']}, goals {j['goals']}, completed {j['completed']}, "
                     f"exited {j['exited']}")
        lines.append(f"  {'step':<24}{'entered':>9}{'sent':>8}{'opened':>8}{'clicked':>8}{'convert':>8}{'exited':>8}")
        for s in j["steps"]:
            if s["entered"] or s["exited"]:
                lines.append(f"  {s['step']:<24}{s['entered']:>9}{s['sent']:>8}{s['opened']:>8}{s['clicked']:>8}"
                             f"{s['converted']:>8}{s['exited']:>8}")
        for st in j["stages"]:
            conv = "-" if st["conversion"] is None else f"{st['conversion']:.0%}"
            hours = "-" if st["median_hours"] is None else f"{st['median_hours']} h"
            lines.append(f"  stage {st['stage']:<18} entered {st['entered']:>6}  to next {conv:>5}  median {hours}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nurture simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--journeys", default="", help="comma-separated keys (default: the whole playbook)")
    parser.add_argument("--behaviour", default=None, help="JSON object, or @file")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes to split the leads over (default: one per core from 1,000 leads)")
    args = parser.parse_args(argv)
    try:
        report = simulate(journeys=[k for k in args.journeys.split(",") if k] or None, leads=args.leads,
                          days=args.days, seed=args.seed, behaviour=_behaviour(args.behaviour),
                          workers=args.workers)
    except (SimulationError, DefinitionError, ValueError, OSError) as exc:
        print(f"nurture simulate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
