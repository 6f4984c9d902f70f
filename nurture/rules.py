"""The one adapter between the project and durable_rules.

Rules are data: `RuleSpec(name, when, meta)` where `when` is a condition tree

    {"all": [cond, ...]} | {"any": [cond, ...]} | {"fact": "<dotted.name>", "<op>": value}

with ops `eq ne gt gte lt lte in contains exists matches`. A set of rules is compiled once into a
durable_rules ruleset whose name carries the definition and version (rulesets can never be replaced,
see docs/RULES-ENGINE.md). Evaluation is stateless: the facts are a snapshot asserted as one fact
under a fixed sid and retracted right after, so the engine holds no lead state and every matching rule
fires (a posted *event* would be consumed by the first match only). Actions do no I/O: they only record
which rule fired. Effects are the caller's, and forward chaining is the explicit, bounded `chain`.

Facts are flattened for the engine: nested keys become `a__b`, scalars carry their type in the name
(durable_rules would otherwise compare "pricing" > 0 as strings), and list values become presence
flags `name__has__<value>`, because durable_rules' array operators proved unreliable.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import logging
import re
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from durable import engine as durable_engine

from nurture.datafiles import DataFileError
from nurture.jsontypes import JsonMapping, JsonObject, JsonValue

OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "exists", "matches")
log = logging.getLogger(__name__)
_SID = "0"
_MARKER = "nurture__snapshot"
MEMO_LIMIT = 100_000  # distinct pruned snapshots remembered per rule set


class RulesError(Exception):
    """Base of this module's errors: InvalidRule (a definition problem), RuleLoopError (chaining)."""


class InvalidRule(RulesError, DataFileError):
    """Rules that cannot be compiled; `problems` lists every reason (rules come from data files, so
    this is the data files' error too)."""

    def __init__(self, problems: list[str]) -> None:
        DataFileError.__init__(self, problems)


class RuleLoopError(RulesError):
    def __init__(self, rules: list[str], rounds: int) -> None:
        super().__init__(f"rules still firing after {rounds} rounds: {', '.join(sorted(set(rules)))}")
        self.rules = rules


@dataclass(frozen=True)
class RuleSpec:
    name: str
    when: JsonMapping
    meta: JsonMapping = field(default_factory=dict)


@dataclass(frozen=True)
class Match:
    """A rule that fired, with the facts its condition read (for explanations)."""

    rule: str
    meta: JsonMapping
    facts: JsonMapping


# ---------------------------------------------------------------------------------------------------
# Validation and the reference evaluator


def validate_condition(cond: JsonValue, path: str = "when") -> list[str]:
    """Every problem in a condition tree, each naming where it is."""
    if not isinstance(cond, Mapping):
        return [f"{path}: expected a mapping, got {type(cond).__name__}"]
    if "all" in cond or "any" in cond:
        key = "all" if "all" in cond else "any"
        items = cond[key]
        if set(cond) != {key}:
            return [f"{path}: '{key}' cannot be combined with {sorted(set(cond) - {key})}"]
        if not isinstance(items, list) or not items:
            return [f"{path}.{key}: expected a non-empty list"]
        problems: list[str] = []
        for i, item in enumerate(items):
            problems.extend(validate_condition(item, f"{path}.{key}[{i}]"))
        return problems
    fact = cond.get("fact")
    if not isinstance(fact, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", fact):
        return [f"{path}: 'fact' must be a dotted name, got {fact!r}"]
    ops = [k for k in cond if k != "fact"]
    if len(ops) != 1 or ops[0] not in OPS:
        return [f"{path}: exactly one operator of {', '.join(OPS)} is required, got {ops}"]
    op, value = ops[0], cond[ops[0]]
    if op == "in" and (not isinstance(value, list) or not value):
        return [f"{path}: 'in' needs a non-empty list"]
    if op in ("gt", "gte", "lt", "lte") and (isinstance(value, bool) or not isinstance(value, int | float)):
        return [f"{path}: '{op}' needs a number"]
    if op == "exists" and not isinstance(value, bool):
        return [f"{path}: 'exists' needs true or false"]
    if op == "matches":
        try:
            re.compile(str(value))
        except re.error as exc:
            return [f"{path}: bad pattern: {exc}"]
    if op == "contains" and not isinstance(value, str | int):
        return [f"{path}: 'contains' needs a string or integer"]
    if op in ("eq", "ne") and not isinstance(value, str | int | float | bool):
        return [f"{path}: '{op}' needs a scalar"]
    return []


def _lookup(facts: JsonMapping, dotted: str) -> tuple[bool, JsonValue]:
    current: JsonValue = facts
    for part in dotted.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return False, None
        current = current[part]
    return current is not None, current


def _num(value: JsonValue) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def reference_evaluate_condition(cond: JsonMapping, facts: JsonMapping) -> bool:
    """Plain-Python meaning of a condition: the oracle the engine is tested against."""
    if "all" in cond:
        return all(reference_evaluate_condition(c, facts) for c in cond["all"])
    if "any" in cond:
        return any(reference_evaluate_condition(c, facts) for c in cond["any"])
    present, value = _lookup(facts, cond["fact"])
    op = next(k for k in cond if k != "fact")
    expected = cond[op]
    if op == "exists":
        return present == bool(expected) if not isinstance(value, Mapping | list) else present == expected
    if not present or isinstance(value, Mapping):
        return False
    if op == "contains":
        return isinstance(value, list) and any(_same(v, expected) for v in value)
    if isinstance(value, list):
        return False
    if op == "eq":
        return _same(value, expected)
    if op == "ne":
        return not _same(value, expected)
    if op == "in":
        return any(_same(value, e) for e in expected)
    if op == "matches":
        return isinstance(value, str) and re.fullmatch(str(expected), value) is not None
    if not _num(value):
        return False
    return bool({
        "gt": value > expected,
        "gte": value >= expected,
        "lt": value < expected,
        "lte": value <= expected,
    }[op])


def unmet(cond: JsonMapping, facts: JsonMapping) -> list[str]:
    """Why a condition does not hold for these facts, one line per clause that fails (empty when it
    holds): `lead.segment is 'family', needs eq 'skilled_professional'`. An `any` that fails lists its
    alternatives under "one of". Same meaning as reference_evaluate_condition, which decides."""
    if reference_evaluate_condition(cond, facts):
        return []
    if "all" in cond:
        return [line for c in cond["all"] for line in unmet(c, facts)]
    if "any" in cond:
        options = ["; ".join(unmet(c, facts)) for c in cond["any"]]
        return ["one of: " + " | ".join(o for o in options if o)]
    present, value = _lookup(facts, cond["fact"])
    op = next(k for k in cond if k != "fact")
    shown = repr(value) if present else "missing"
    return [f"{cond['fact']} is {shown}, needs {op} {cond[op]!r}"]


def _same(a: JsonValue, b: JsonValue) -> bool:
    # Booleans are not numbers here (True == 1 in Python, not in the rule language).
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _num(a) and _num(b):
        return bool(a == b)
    return type(a) is type(b) and a == b


def reference_evaluate(specs: Sequence[RuleSpec], facts: JsonMapping) -> list[str]:
    """Names of the rules whose condition holds, in definition order."""
    return [s.name for s in specs if reference_evaluate_condition(s.when, facts)]


# ---------------------------------------------------------------------------------------------------
# Compilation to durable_rules


def _flat_name(dotted: str) -> str:
    return dotted.replace(".", "__")


def _has_name(dotted: str, value: JsonValue) -> str:
    return f"{_flat_name(dotted)}__has__{_token(value)}"


def _token(value: JsonValue) -> str:
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_]+", text):
        return text
    return "x" + text.encode().hex()


def flatten_facts(facts: JsonMapping, prefix: str = "") -> JsonObject:
    """The snapshot as the engine sees it: flat names typed by suffix (`__s` strings, `__n` numbers,
    `__b` booleans), so the engine never compares a string with a number; lists as presence flags."""
    flat: JsonObject = {}
    for key, value in facts.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        name = _flat_name(dotted)
        if value is None:
            continue  # JSON null is no value, as in the reference (`_lookup`)
        flat[f"{name}__any"] = 1
        if isinstance(value, str | int | float) and not isinstance(value, Mapping | list):
            flat[f"{name}__v"] = _canonical(value)
        if isinstance(value, Mapping):
            flat[f"{name}__obj"] = True
            flat.update(flatten_facts(value, dotted))
        elif isinstance(value, list):
            flat[f"{name}__list"] = True
            for item in value:
                if isinstance(item, str | int | float | bool):
                    flat[_has_name(dotted, item)] = True
        elif isinstance(value, bool):
            flat[f"{name}__b"] = 1 if value else 0
        elif isinstance(value, int | float):
            flat[f"{name}__n"] = value
        elif isinstance(value, str):
            flat[f"{name}__s"] = value
    return flat


def _canonical(value: JsonValue) -> str:
    """One string per scalar value and type: eq/ne compile to a single test without an $or (each
    $or multiplies the engine's expanded alternatives, and nested ones exceed its limits)."""
    if isinstance(value, bool):
        return "b:1" if value else "b:0"
    if isinstance(value, int | float):
        return f"n:{float(value) + 0.0!r}"  # + 0.0 folds -0.0 into 0.0
    return f"s:{value}"


def _compile_condition(cond: JsonMapping) -> JsonObject:
    if "all" in cond:
        return {"$and": [_compile_condition(c) for c in cond["all"]]}
    if "any" in cond:
        return {"$or": [_compile_condition(c) for c in cond["any"]]}
    dotted = cond["fact"]
    name = _flat_name(dotted)
    op = next(k for k in cond if k != "fact")
    value = cond[op]
    if op == "eq":
        return {f"{name}__v": _canonical(value)}
    if op == "ne":
        # Present as a scalar, of another type or value.
        return {"$and": [{"$ex": {f"{name}__v": 1}}, {"$neq": {f"{name}__v": _canonical(value)}}]}
    if op == "in":
        return {"$or": [_compile_condition({"fact": dotted, "eq": v}) for v in value]}
    if op == "contains":
        return {"$ex": {_has_name(dotted, value): 1}}
    if op == "exists":
        return {"$ex": {f"{name}__any": 1}} if value else {"$nex": {f"{name}__any": 1}}
    if op == "matches":
        return {"$mt": {f"{name}__s": str(value)}}
    return {f"${op}": {f"{name}__n": value}}


_host_lock = threading.Lock()
_host: durable_engine.Host | None = None
_registered: dict[str, CompiledRules] = {}
_ids = itertools.count(1)


class _SynchronousHost(durable_engine.Host):  # type: ignore[misc]  # durable_rules is untyped: its base is Any
    """durable_rules' Host without its background dispatch loop.

    The stock Host starts a new `threading.Timer` thread per registered ruleset every 0.2 s, twice
    (actions and engine timers), forever: with the scoring model's 18 rulesets that is 180 thread
    starts a second, about 5% of a core per idle service, and GIL hand-offs that delay the event loop.
    This adapter needs neither loop: an asserted fact's actions run in the asserting thread before
    `assert_fact` returns, and time lives outside the engine (no engine timers). Without the loop a
    background thread can also no longer pick up an action concurrently with `evaluate`."""

    def _run(self) -> None:
        return None


def _get_host() -> durable_engine.Host:
    global _host
    if _host is None:
        _host = _SynchronousHost()
    return _host


class CompiledRules:
    """A registered durable_rules ruleset for one versioned set of rule specs."""

    def __init__(self, name: str, specs: Sequence[RuleSpec]) -> None:
        self.name = name
        self.specs = list(specs)
        self._order = {s.name: i for i, s in enumerate(self.specs)}
        self._by_name = {s.name: s for s in self.specs}
        self._fired: list[str] = []
        self._facts_read = {s.name: _facts_of(s.when) for s in self.specs}
        self._paths = _covering_paths({f for read in self._facts_read.values() for f in read})
        # The top-level facts the rules read: a caller may build only these (the rest cannot change
        # an answer or an explanation).
        self.roots = frozenset(parts[0] for parts in self._paths)
        self._key = _memo_key_of(tuple(_path_key_of(parts) for parts in self._paths))
        self._memo: dict[tuple[_PathKey, ...], list[Match]] = {}
        self._decisions: dict[tuple[Hashable, ...], list[str]] = {}
        # Paths that rules only test with `exists` (and read nothing inside): the engine's answer
        # depends on whether they hold a value, not on which (`lead.id` differs for every lead).
        tests = _tests_of([s.when for s in self.specs])
        self._presence_only = tuple(
            i for i, parts in enumerate(self._paths)
            if tests.get(".".join(parts)) == {"exists"}
            and not any(f.startswith(".".join(parts) + ".") for f in tests))
        definition: JsonObject = {}
        for i, spec in enumerate(self.specs):
            # The marker keeps purely negative conditions from matching the engine's own session
            # state, which it re-evaluates after every action (seen as an endless firing loop).
            when = {"$and": [{_MARKER: 1}, _compile_condition(spec.when)]}
            definition[f"r{i}"] = {"all": [{"m": when}], "run": self._action(spec.name)}
        # Rules the engine cannot take (it expands every `any` into alternatives and refuses past a
        # limit) are decided by the reference evaluation, which is proven to decide the same.
        self.fallback: list[RuleSpec] = []
        host = _get_host()
        try:
            host.set_rulesets({name: copy.deepcopy(definition)})
        except Exception:
            kept: JsonObject = {}
            for i, spec in enumerate(self.specs):
                try:
                    host.set_rulesets({f"{name}__probe{i}": copy.deepcopy({f"r{i}": definition[f"r{i}"]})})
                    kept[f"r{i}"] = definition[f"r{i}"]
                except Exception:
                    log.warning("rule %s of %s is too large for the engine; evaluated directly", spec.name, name)
                    self.fallback.append(spec)
            kept = kept or {"r_none": {"all": [{"m": {_MARKER: 2}}], "run": lambda _c: None}}
            host.set_rulesets({name: copy.deepcopy(kept)})

    def _action(self, rule: str) -> Callable[[object], None]:
        def fire(_c: object) -> None:
            self._fired.append(rule)

        return fire

    def evaluate(self, facts: JsonMapping) -> list[Match]:
        """Every rule whose condition holds for `facts`, in definition order.

        Only the facts the rules read reach the engine: its cost grows with the size of the asserted
        fact (flattening, and JSON both ways across its C boundary), and a lead snapshot is far larger
        than what one rule set reads. Evaluation is a pure function of those facts, and the same few
        combinations recur all the time (segment, category, consent...), so each distinct one is asked
        once and remembered (bounded): the engine's answer (which rules hold) per distinct decision, a
        fact tested only with `exists` counting by its presence; the matches, which carry the values
        read for explanations, per distinct facts read."""
        key = self._key(facts)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= MEMO_LIMIT:
                self._memo.clear()
            found = self._memo[key] = self._matches(self._decide(key, facts), facts)
        return found

    def _decide(self, key: tuple[_PathKey, ...], facts: JsonMapping) -> list[str]:
        """The rules that hold, asked of the engine once per distinct decision key: the memo key with
        each presence-only path reduced to whether it holds a value."""
        decision: tuple[Hashable, ...] = key
        if self._presence_only:
            reduced: list[Hashable] = list(key)
            for i in self._presence_only:
                depth, value = key[i]
                reduced[i] = depth == len(self._paths[i]) and value != _NULL
            decision = tuple(reduced)
        fired = self._decisions.get(decision)
        if fired is None:
            if len(self._decisions) >= MEMO_LIMIT:
                self._decisions.clear()
            fired = self._decisions[decision] = self._evaluate(_prune(facts, self._paths))
        return fired

    def _evaluate(self, facts: JsonMapping) -> list[str]:
        flat = flatten_facts(facts)
        fact = {"id": next(_ids), "sid": _SID, _MARKER: 1, **flat}
        host = _get_host()
        with _host_lock:
            self._fired.clear()
            try:
                host.assert_fact(self.name, fact)
            except durable_engine.MessageNotHandledException:
                pass  # no rule matched
            finally:
                with contextlib.suppress(durable_engine.MessageNotHandledException):
                    host.retract_fact(self.name, fact)
            fired_set = set(self._fired)
        fired_set.update(s.name for s in self.fallback if reference_evaluate_condition(s.when, facts))
        return sorted(fired_set, key=self._order.__getitem__)

    def _matches(self, fired: list[str], facts: JsonMapping) -> list[Match]:
        matches = []
        for rule in fired:
            spec = self._by_name[rule]
            read = {f: _lookup(facts, f)[1] for f in self._facts_read[rule]}
            matches.append(Match(rule=rule, meta=spec.meta, facts=read))
        return matches


def _covering_paths(dotted: set[str]) -> tuple[tuple[str, ...], ...]:
    """The fact paths to keep, without those inside another kept path (kept whole already)."""
    kept: list[tuple[str, ...]] = []
    for parts in sorted(tuple(d.split(".")) for d in dotted):
        if not any(parts[:len(k)] == k for k in kept):
            kept.append(parts)
    return tuple(kept)


def _prune(facts: JsonMapping, paths: tuple[tuple[str, ...], ...]) -> JsonObject:
    """A new tree holding only `paths` of `facts` (each kept value whole); the same meaning for rules
    that read only those paths, as the compiled conditions name nothing outside them."""
    out: JsonObject = {}
    for parts in paths:
        src: JsonValue = facts
        dst = out
        for i, part in enumerate(parts):
            if not isinstance(src, Mapping) or part not in src:
                break
            src = src[part]
            if i == len(parts) - 1 or not isinstance(src, Mapping):
                dst[part] = src
                break
            dst = dst.setdefault(part, {})
    return out


_ABSENT = object()
_NULL = (type(None), None)  # _frozen(None)
# One path's part of a memo key: how deep the walk went, and the value found there (frozen) or _ABSENT.
_PathKey = tuple[int, Hashable]


def _path_key(facts: JsonMapping, parts: tuple[str, ...]) -> _PathKey:
    """What `_prune` keeps of one path, as a hashable value: how deep the walk went and what it found
    there (the value frozen, or absent). Equal keys for all paths mean equal pruned facts, so equal
    answers; built without the pruned copy, which is only made when the memo misses."""
    src: JsonValue = facts
    depth = 0
    for part in parts:
        if type(src) is dict:  # dict first: the ABC check is slow; one lookup, as _ABSENT is no value
            src = src.get(part, _ABSENT)
            if src is _ABSENT:
                return (depth, _ABSENT)
        elif isinstance(src, Mapping):
            if part not in src:
                return (depth, _ABSENT)
            src = src[part]
        else:
            return (depth, _frozen(src))
        depth += 1
    return (depth, _frozen(src))


def _path_key_of(parts: tuple[str, ...]) -> Callable[[JsonMapping], _PathKey]:
    """`_path_key` for one path, as a function of the facts: the walk written out for the usual paths
    (one to three names through plain dicts), `_path_key` itself for anything else."""
    if len(parts) == 1:
        (a,) = parts

        def one(facts: JsonMapping) -> _PathKey:
            if type(facts) is dict:
                v = facts.get(a, _ABSENT)
                return (0, _ABSENT) if v is _ABSENT else (1, _frozen(v))
            return _path_key(facts, parts)

        return one
    if len(parts) == 2:
        a, b = parts

        def two(facts: JsonMapping) -> _PathKey:
            if type(facts) is dict:
                v = facts.get(a, _ABSENT)
                if v is _ABSENT:
                    return (0, _ABSENT)
                if type(v) is dict:
                    w = v.get(b, _ABSENT)
                    return (1, _ABSENT) if w is _ABSENT else (2, _frozen(w))
            return _path_key(facts, parts)

        return two
    if len(parts) == 3:
        a, b, c = parts

        def three(facts: JsonMapping) -> _PathKey:
            if type(facts) is dict:
                v = facts.get(a, _ABSENT)
                if v is _ABSENT:
                    return (0, _ABSENT)
                if type(v) is dict:
                    w = v.get(b, _ABSENT)
                    if w is _ABSENT:
                        return (1, _ABSENT)
                    if type(w) is dict:
                        x = w.get(c, _ABSENT)
                        return (2, _ABSENT) if x is _ABSENT else (3, _frozen(x))
            return _path_key(facts, parts)

        return three
    return functools.partial(_path_key, parts=parts)


def _memo_key_of(path_keys: tuple[Callable[[JsonMapping], _PathKey], ...],
                 ) -> Callable[[JsonMapping], tuple[_PathKey, ...]]:
    """The memo key of a rule set (its paths' keys, in order) as one function: written out for the
    usual one or two paths, as a list comprehension costs a call of its own for each evaluation."""
    if len(path_keys) == 1:
        (first,) = path_keys
        return lambda facts: (first(facts),)
    if len(path_keys) == 2:
        first, second = path_keys
        return lambda facts: (first(facts), second(facts))
    return lambda facts: tuple([path_key(facts) for path_key in path_keys])


_TRUE, _FALSE = (bool, True), (bool, False)


def _frozen(value: JsonValue) -> Hashable:
    """A hashable value equal for two values only when they are the same fact: a string is itself;
    other values carry their type, because 1, 1.0 and True are equal in Python and not in the rule
    language; a float is its repr (-0.0 and 0.0 are shown differently in explanations); a value JSON
    cannot hold is its type and text, as a datetime is not its string."""
    kind = type(value)
    if kind is str:
        text: str = value  # `type(...) is` (faster than isinstance here) does not narrow for mypy
        return text
    if kind is bool:  # (the two answers made once: consent and flags are read on every message)
        return _TRUE if value else _FALSE
    if kind is int or value is None:
        return (kind, value)
    if kind is float:
        return (kind, repr(value))
    if kind is list:  # (before the Mapping check, an ABC's slow isinstance: the signals list is read often)
        return (list, tuple([_frozen(v) for v in value]))
    if kind is dict or isinstance(value, Mapping):
        return (dict, frozenset([((type(k), k), _frozen(v)) for k, v in value.items()]))
    if isinstance(value, list | tuple):
        return (list, tuple([_frozen(v) for v in value]))
    return (kind, str(value))


def _tests_of(conds: Sequence[JsonMapping]) -> dict[str, set[str]]:
    """Each fact the conditions read, with the operators they test it with."""
    tests: dict[str, set[str]] = {}
    todo = list(conds)
    while todo:
        cond = todo.pop()
        if "all" in cond or "any" in cond:
            todo.extend(cond.get("all", cond.get("any", [])))
        else:
            tests.setdefault(cond["fact"], set()).update(k for k in cond if k != "fact")
    return tests


def _facts_of(cond: JsonMapping) -> list[str]:
    if "all" in cond or "any" in cond:
        out: list[str] = []
        for c in cond.get("all", cond.get("any", [])):
            out.extend(f for f in _facts_of(c) if f not in out)
        return out
    return [cond["fact"]]


def compile_rules(ruleset_name: str, specs: Sequence[RuleSpec]) -> CompiledRules:
    """Compile and register once per name; the same name again returns the registered rules (a new
    version must use a new name: durable_rules cannot replace a ruleset)."""
    problems: list[str] = []
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            problems.append(f"rule {spec.name}: duplicate name")
        seen.add(spec.name)
        problems.extend(f"rule {spec.name}: {p}" for p in validate_condition(spec.when))
    if problems:
        raise InvalidRule(problems)
    with _host_lock:
        existing = _registered.get(ruleset_name)
        if existing is not None:
            if [(s.name, dict(s.when)) for s in existing.specs] != [(s.name, dict(s.when)) for s in specs]:
                raise InvalidRule([f"ruleset {ruleset_name} already registered with other rules"])
            return existing
        compiled = CompiledRules(ruleset_name, specs)
        _registered[ruleset_name] = compiled
        return compiled


def chain(
    compiled: CompiledRules,
    facts: JsonObject,
    apply: Callable[[list[Match], JsonObject], JsonObject],
    *,
    max_rounds: int = 8,
) -> list[Match]:
    """Explicit forward chaining: evaluate, let the caller apply effects and return the new facts,
    evaluate again, until no rule fires that has not fired already. A rule set still producing new
    firings after `max_rounds` is a loop, reported with the rules involved."""
    fired: list[Match] = []
    seen: set[str] = set()
    for _ in range(max_rounds):
        new = [m for m in compiled.evaluate(facts) if m.rule not in seen]
        if not new:
            return fired
        seen.update(m.rule for m in new)
        fired.extend(new)
        facts = apply(new, facts)
    raise RuleLoopError([m.rule for m in fired], max_rounds)
