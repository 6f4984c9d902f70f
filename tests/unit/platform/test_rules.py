"""The rules adapter decides exactly as the plain reference evaluation of the same definitions."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nurture.rules import (
    InvalidRule,
    RuleLoopError,
    RuleSpec,
    chain,
    compile_rules,
    reference_evaluate,
    validate_condition,
)

FACTS = ["type", "score", "opens_7d", "properties.category", "segment", "countries", "urgent"]
STRINGS = ["pricing", "page_viewed", "family", "CA", "US", "high intent", ""]
_names = itertools.count()

scalars = st.one_of(st.sampled_from(STRINGS), st.integers(-5, 100), st.booleans(),
                    st.floats(-5, 100, allow_nan=False).map(lambda f: round(f, 2)))


def leaves() -> st.SearchStrategy[dict]:
    fact = st.sampled_from(FACTS)
    return st.one_of(
        st.builds(lambda f, v: {"fact": f, "eq": v}, fact, scalars),
        st.builds(lambda f, v: {"fact": f, "ne": v}, fact, scalars),
        st.builds(lambda f, op, v: {"fact": f, op: v}, fact, st.sampled_from(["gt", "gte", "lt", "lte"]),
                  st.integers(-5, 100)),
        st.builds(lambda f, v: {"fact": f, "in": v}, fact, st.lists(scalars, min_size=1, max_size=3)),
        st.builds(lambda f, v: {"fact": f, "contains": v}, fact, st.sampled_from(["CA", "US", "high intent"])),
        st.builds(lambda f, v: {"fact": f, "exists": v}, fact, st.booleans()),
        st.builds(lambda f, v: {"fact": f, "matches": v}, fact, st.sampled_from(["pri.*", "C.", ".*"])),
    )


conditions = st.recursive(
    leaves(),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
    ),
    max_leaves=6,
)

fact_values = st.one_of(scalars, st.lists(st.sampled_from(["CA", "US", "DE", "high intent"]), max_size=3))
snapshots = st.fixed_dictionaries(
    {},
    optional={
        "type": fact_values,
        "score": fact_values,
        "opens_7d": fact_values,
        "properties": st.fixed_dictionaries({}, optional={"category": fact_values}),
        "segment": fact_values,
        "countries": fact_values,
        "urgent": fact_values,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(conditions, min_size=1, max_size=5), st.lists(snapshots, min_size=1, max_size=6))
def test_engine_agrees_with_reference(conds: list[dict], facts_list: list[dict]) -> None:
    specs = [RuleSpec(name=f"rule_{i}", when=c) for i, c in enumerate(conds)]
    compiled = compile_rules(f"prop_{next(_names)}", specs)
    for facts in facts_list:
        engine = [m.rule for m in compiled.evaluate(facts)]
        assert engine == reference_evaluate(specs, facts), (conds, facts)


def test_match_explains_the_facts_it_read() -> None:
    specs = [RuleSpec("urgent_timeline", {"all": [{"fact": "type", "eq": "form_submitted"},
                                                   {"fact": "attributes.timeline", "eq": "urgent"}]},
                      {"goto": "decision"})]
    compiled = compile_rules("explain_test_v1", specs)
    (match,) = compiled.evaluate({"type": "form_submitted", "attributes": {"timeline": "urgent"}})
    assert match.rule == "urgent_timeline"
    assert match.meta == {"goto": "decision"}
    assert match.facts == {"type": "form_submitted", "attributes.timeline": "urgent"}
    assert compiled.evaluate({"type": "form_submitted", "attributes": {"timeline": "later"}}) == []


def test_invalid_definitions_list_every_problem() -> None:
    with pytest.raises(InvalidRule) as err:
        compile_rules("bad_v1", [RuleSpec("a", {"fact": "x", "gt": "ten"}),
                                 RuleSpec("a", {"all": []}), RuleSpec("c", {"fact": "y", "between": 3})])
    assert len(err.value.problems) == 4
    assert validate_condition({"fact": "x", "matches": "("})[0].startswith("when: bad pattern")


def test_registered_name_cannot_be_replaced() -> None:
    compile_rules("fixed_v1", [RuleSpec("a", {"fact": "x", "eq": 1})])
    assert compile_rules("fixed_v1", [RuleSpec("a", {"fact": "x", "eq": 1})]).name == "fixed_v1"
    with pytest.raises(InvalidRule):
        compile_rules("fixed_v1", [RuleSpec("a", {"fact": "x", "eq": 2})])


def test_chain_applies_effects_until_quiet_and_bounds_loops() -> None:
    specs = [
        RuleSpec("to_mql", {"fact": "score", "gte": 50}, {"set": {"stage": "mql"}}),
        RuleSpec("alert_on_mql", {"fact": "stage", "eq": "mql"}, {"set": {"alerted": True}}),
    ]
    compiled = compile_rules("chain_v1", specs)

    def apply(matches, facts):
        new = dict(facts)
        for m in matches:
            new.update(m.meta["set"])
        return new

    fired = chain(compiled, {"score": 60}, apply)
    assert [m.rule for m in fired] == ["to_mql", "alert_on_mql"]
    with pytest.raises(RuleLoopError) as err:
        chain(compiled, {"score": 60}, apply, max_rounds=1)
    assert "alert_on_mql" in str(err.value) or "to_mql" in str(err.value)


def test_conditions_too_large_for_the_engine_still_decide_like_the_reference() -> None:
    # durable_rules expands every `any` into alternatives and refuses past a limit (16 x 3 here).
    huge = {"all": [{"any": [{"fact": f"f{i}", "eq": v} for v in range(3)]} for i in range(16)]}
    specs = [RuleSpec("small", {"fact": "type", "ne": "pricing"}), RuleSpec("huge", huge),
             RuleSpec("many_ne", {"all": [{"fact": "type", "ne": "x"} for _ in range(8)]})]
    compiled = compile_rules(f"too_large_{next(_names)}", specs)
    assert [s.name for s in compiled.fallback] == ["huge"]
    for facts in ({f"f{i}": i % 3 for i in range(16)}, {"type": "pricing"}, {"type": "page", "f0": 9}, {}):
        assert [m.rule for m in compiled.evaluate(facts)] == reference_evaluate(specs, facts)
    assert any(m.rule == "huge" for m in compiled.evaluate({f"f{i}": 1 for i in range(16)}))


def test_null_is_no_value() -> None:
    specs = [RuleSpec("has", {"fact": "a", "exists": True}), RuleSpec("ne", {"fact": "a", "ne": "x"})]
    compiled = compile_rules(f"nulls_{next(_names)}", specs)
    assert [m.rule for m in compiled.evaluate({"a": None})] == reference_evaluate(specs, {"a": None}) == []
