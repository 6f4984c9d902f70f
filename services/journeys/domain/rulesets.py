"""Compiled rule sets for journeys, one per (journey, version, part, event type), and explanations.

Every condition is evaluated through nurture.rules (durable_rules). The event type is filtered in
Python first: a rule set holds only the rules that listen to that type, so most messages cost one
dictionary lookup (see docs/RULES-ENGINE.md for what an engine evaluation costs); the adapter
prunes the facts to what a rule set reads and remembers each distinct answer. Rule set names
carry the journey key, the version and a digest of the rules, because durable_rules can never replace
a registered rule set and a test process may see two different definitions with the same version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from nurture.jsontypes import JsonMapping
from nurture.rules import CompiledRules, Match, RuleSpec, compile_rules
from services.journeys.domain.definitions import Journey, Rule
from services.journeys.domain.steps import BranchRule

_cache: dict[tuple[str, int, str, str, str], CompiledRules | None] = {}
# (journey, version, digest, part, event type) -> the compiled rules with their Rule by name, or None
_parts: dict[tuple[str, int, str, str, str], tuple[CompiledRules, dict[str, Rule]] | None] = {}
_listens: dict[tuple[str, int, str, str, str], bool] = {}
_roots: dict[tuple[str, int, str, str, tuple[str, ...], str], frozenset[str]] = {}


def _digest(specs: Sequence[RuleSpec]) -> str:
    text = json.dumps([[s.name, s.when] for s in specs], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _compiled(journey: Journey, part: str, rules: Sequence[Rule], event_type: str) -> CompiledRules | None:
    doc_digest = journey.digest
    key = (journey.key, journey.version, part, event_type, doc_digest)
    if key in _cache:
        return _cache[key]
    specs = [RuleSpec(r.name, r.when, {"rule": r.name}) for r in rules if r.listens_to(event_type)]
    compiled = None
    if specs:
        name = f"journeys.{journey.key}.v{journey.version}.{part}.{event_type}.{_digest(specs)}"
        compiled = compile_rules(name, specs)
    _cache[key] = compiled
    return compiled


def listens(journey: Journey, event_type: str) -> bool:
    """Whether any exit or trigger rule of the journey listens to `event_type` (so needs the facts)."""
    key = (journey.key, journey.version, journey.digest, "listens", event_type)
    found = _listens.get(key)
    if found is None:
        found = _listens[key] = any(r.listens_to(event_type) for r in (*journey.exits, *journey.triggers))
    return found


def _part(journey: Journey, part: str, event_type: str) -> tuple[CompiledRules, dict[str, Rule]] | None:
    """The compiled rules of one part that listen to `event_type`, with their Rule by name (None: none)."""
    key = (journey.key, journey.version, journey.digest, part, event_type)
    try:
        return _parts[key]
    except KeyError:
        rules = {"entry": journey.entry, "exit": journey.exits, "triggers": journey.triggers}[part]
        compiled = _compiled(journey, part, rules, event_type)
        found = _parts[key] = (compiled, {r.name: r for r in rules}) if compiled is not None else None
        return found


def roots(journey: Journey, parts: tuple[str, ...], event_type: str) -> frozenset[str]:
    """The top-level facts (lead, event, signals, journeys, journey) that the rules of these parts
    listening to `event_type` read: the facts a caller needs to build for them."""
    key = (journey.key, journey.version, journey.digest, "roots", parts, event_type)
    found = _roots.get(key)
    if found is None:
        compiled = [_part(journey, part, event_type) for part in parts]
        found = _roots[key] = frozenset().union(*(c[0].roots for c in compiled if c is not None))
    return found


def matching(journey: Journey, part: str, event_type: str, facts: Mapping[str, Any]) -> list[tuple[Rule, Match]]:
    """The rules of one part (entry | exit | triggers) that listen to `event_type` and hold, in order."""
    found = _part(journey, part, event_type)
    if found is None:
        return []
    compiled, by_name = found
    matches = compiled.evaluate(facts)
    return [(by_name[m.rule], m) for m in matches] if matches else []


def branch(journey: Journey, step_id: str, rules: Sequence[BranchRule], facts: JsonMapping) -> Match | None:
    """The first rule of a branch step that holds."""
    key = (journey.key, journey.version, "branch", step_id, journey.digest)
    if key not in _cache:
        specs = [RuleSpec(r.name, r.when, {"next": r.next}) for r in rules]
        _cache[key] = compile_rules(f"journeys.{journey.key}.v{journey.version}.branch.{step_id}.{_digest(specs)}",
                                    specs)
    compiled = _cache[key]
    assert compiled is not None
    found = compiled.evaluate(facts)
    return found[0] if found else None


def explain(facts: Mapping[str, Any]) -> str:
    """`timeline=urgent stage_index=1`: the facts a rule read, by their last name."""
    parts = []
    for name, value in facts.items():
        short = name.rsplit(".", 1)[-1]
        if isinstance(value, bool):
            value = str(value).lower()
        parts.append(f"{short}={value}")
    return " ".join(parts)
