"""Count the untyped seams, per package, so a typing effort has a before and an after (issue #14).

    .venv/bin/python tools/typecount.py            # a table
    .venv/bin/python tools/typecount.py --json     # one JSON object, for a closing note or a diff

Counted from the syntax tree (not grep), so comments, strings and docstrings do not count:

- `Any`: every use of the name `Any` (or `typing.Any`) outside import statements: annotations, aliases,
  casts. `dict[str, Any]` uses count here too.
- `dict[str, Any]`: subscripts `dict[str, Any]` / `Dict[str, Any]`.
- `Mapping[str, Any]`: the read-only spelling of the same thing, counted apart.
- `tuple4+`: `tuple[...]` annotations with four or more fixed elements (positional records).
- `step .get`: in the journeys service, `.get(` calls on a journey step or on a part of one (the
  receiver is a name the journeys code gives to steps and their parts: `s`, `step`, `wait`, `pending`,
  `spec`, `ev`, `rule`, `r`, `variant`, `chosen`, or a call of `.step(...)`), outside the modules
  allowed to read the raw document (the parser: `domain/definitions.py`, `domain/steps.py`), which are
  counted apart as `parser .get`. A heuristic over names; the same rule before and after keeps the
  figures comparable.
- `JsonObject`: uses of the `nurture.jsontypes` aliases (JsonObject, JsonMapping, JsonValue), the
  names of JSON that is free-form on purpose, counted apart from `Any`.

`--root DIR` counts another checkout (e.g. main, for the before figures).

Packages: each `services/<name>`, `gateway`, `nurture` (without the generated `nurture/api`), `cli`.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # --root changes it
COLUMNS = ("Any", "dict[str, Any]", "Mapping[str, Any]", "tuple4+", "step .get", "parser .get", "JsonObject")
JSON_ALIASES = frozenset({"JsonObject", "JsonMapping", "JsonValue"})
STEP_NAMES = frozenset({"s", "step", "wait", "pending", "spec", "ev", "rule", "r", "variant", "chosen"})
JOURNEYS = Path("services/journeys")
PARSERS = (JOURNEYS / "domain" / "definitions.py", JOURNEYS / "domain" / "steps.py")


@dataclass(frozen=True)
class Package:
    name: str
    root: Path
    exclude: tuple[Path, ...] = ()

    def files(self) -> list[Path]:
        return sorted(p for p in (ROOT / self.root).rglob("*.py")
                      if not any((ROOT / x) in p.parents for x in self.exclude) and "migrations" not in p.parts)


def packages() -> list[Package]:
    found = [Package(f"services/{p.name}", Path("services") / p.name)
             for p in sorted((ROOT / "services").iterdir()) if (p / "__init__.py").exists()]
    return [*found, Package("gateway", Path("gateway")), Package("nurture", Path("nurture"), (Path("nurture/api"),)),
            Package("cli", Path("cli"))]


def _is_any(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "Any") or (
        isinstance(node, ast.Attribute) and node.attr == "Any" and isinstance(node.value, ast.Name)
        and node.value.id == "typing")


def _str_any(node: ast.Subscript, names: tuple[str, ...]) -> bool:
    base = node.value
    name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""
    if name not in names or not isinstance(node.slice, ast.Tuple) or len(node.slice.elts) != 2:
        return False
    key, value = node.slice.elts
    return isinstance(key, ast.Name) and key.id == "str" and _is_any(value)


def _long_tuple(node: ast.Subscript) -> bool:
    base = node.value
    if not (isinstance(base, ast.Name) and base.id == "tuple") or not isinstance(node.slice, ast.Tuple):
        return False
    elts = node.slice.elts
    return len(elts) >= 4 and not any(isinstance(e, ast.Constant) and e.value is Ellipsis for e in elts)


def _step_get(node: ast.Call) -> bool:
    func = node.func
    if not (isinstance(func, ast.Attribute) and func.attr == "get"):
        return False
    recv = func.value
    if isinstance(recv, ast.Name):
        return recv.id in STEP_NAMES
    return isinstance(recv, ast.Call) and isinstance(recv.func, ast.Attribute) and recv.func.attr == "step"


def count_file(path: Path) -> Counter[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: Counter[str] = Counter()
    rel = path.relative_to(ROOT)
    in_journeys = JOURNEYS in rel.parents
    for node in ast.walk(tree):
        if isinstance(node, ast.Name | ast.Attribute) and _is_any(node):
            out["Any"] += 1
        elif isinstance(node, ast.Name) and node.id in JSON_ALIASES and rel.parts[:2] != ("nurture", "jsontypes.py"):
            out["JsonObject"] += 1
        elif isinstance(node, ast.Subscript):
            if _str_any(node, ("dict", "Dict")):
                out["dict[str, Any]"] += 1
            elif _str_any(node, ("Mapping",)):
                out["Mapping[str, Any]"] += 1
            elif _long_tuple(node):
                out["tuple4+"] += 1
        elif in_journeys and isinstance(node, ast.Call) and _step_get(node):
            out["parser .get" if rel in PARSERS else "step .get"] += 1
    return out


def count() -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    total: Counter[str] = Counter()
    for pkg in packages():
        c: Counter[str] = Counter()
        for path in pkg.files():
            c.update(count_file(path))
        table[pkg.name] = {col: c[col] for col in COLUMNS}
        total.update(c)
    table["total"] = {col: total[col] for col in COLUMNS}
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--root", type=Path, help="the checkout to count (default: this one)")
    args = parser.parse_args(argv)
    if args.root is not None:
        global ROOT
        ROOT = args.root.resolve()
    table = count()
    if args.json:
        print(json.dumps(table, indent=1))
        return 0
    width = max(len(k) for k in table)
    print(f"{'package':<{width}}  " + "  ".join(f"{c:>{max(len(c), 5)}}" for c in COLUMNS))
    for name, row in table.items():
        print(f"{name:<{width}}  " + "  ".join(f"{row[c]:>{max(len(c), 5)}}" for c in COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
