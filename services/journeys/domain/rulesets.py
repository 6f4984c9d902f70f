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
# (journey, version, digest, event type) -> what its rules do with that event type
_events: dict[tuple[str, int, str, str], EventRules] = {}


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


_Part = tuple[CompiledRules, dict[str, Rule]]  # a part's rules listening to one event type, by name


class EventRules:
    """What one journey's rules do with one event type, worked out once: each part's compiled rules
    (None when no rule of it listens) and the top-level facts (lead, event, signals, journeys,
    journey) they read, so a caller builds only those, and nothing when no rule listens."""

    def __init__(self, journey: Journey, event_type: str) -> None:
        def part(name: str, rules: Sequence[Rule]) -> _Part | None:
            compiled = _compiled(journey, name, rules, event_type)
            return (compiled, {r.name: r for r in rules}) if compiled is not None else None

        self.entry = part("entry", journey.entry)
        self.exit = part("exit", journey.exits)
        self.triggers = part("triggers", journey.triggers)
        self.entry_roots = self.entry[0].roots if self.entry is not None else frozenset()
        # What an enrolled lead's message is checked against: the exits, then the triggers.
        self.enrolled = self.exit is not None or self.triggers is not None
        self.enrolled_roots = frozenset().union(*(p[0].roots for p in (self.exit, self.triggers) if p is not None))


def for_event(journey: Journey, event_type: str) -> EventRules:
    key = (journey.key, journey.version, journey.digest, event_type)
    found = _events.get(key)
    if found is None:
        found = _events[key] = EventRules(journey, event_type)
    return found


def matching(part: _Part | None, facts: Mapping[str, Any]) -> list[tuple[Rule, Match]]:
    """The rules of one part of an EventRules (entry | exit | triggers) that hold, in order."""
    if part is None:
        return []
    compiled, by_name = part
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
    """`timeline=urgent stage_index=1`: the facts a rule read, by their last name; two that share it by
    their last two (`attributes.timeline=None properties.timeline=urgent`: the profile's and the
    event's), or the timeline says `timeline=None timeline=urgent` and nobody can tell which was which."""
    last = [name.rsplit(".", 1)[-1] for name in facts]
    parts = []
    for name, value in facts.items():
        short = name.rsplit(".", 1)[-1]
        if last.count(short) > 1:
            short = ".".join(name.rsplit(".", 2)[-2:])
        if isinstance(value, bool):
            value = str(value).lower()
        parts.append(f"{short}={value}")
    return " ".join(parts)
