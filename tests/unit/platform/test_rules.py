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
    # Only what the engine cannot expand (alternatives: any, in) may fall back to the reference.
    assert all("any" in str(s.when) or "'in'" in str(s.when) for s in compiled.fallback), compiled.fallback
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
    assert str(err.value) == "; ".join(err.value.problems)
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
    assert err.value.rules and set(err.value.rules) <= {"to_mql", "alert_on_mql"}
    assert str(err.value).startswith("rules still firing after 1 rounds: ")


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


# Explicit boundaries for every operator: the property test above draws threshold and value independently,
# so a value equal to its threshold (where gt and gte, lt and lte differ) is rare there. Each row is checked
# against the adapter (durable_rules) and the reference evaluator alike.
MISSING = object()
BOUNDARIES: list[tuple[str, object, object, bool]] = [
    # op, expected (the rule's value), the fact's value, holds
    ("gt", 70, 69, False), ("gt", 70, 70, False), ("gt", 70, 71, True), ("gt", 70, 70.5, True),
    ("gt", 70, 69.99, False), ("gt", 0, 0, False), ("gt", -1, 0, True), ("gt", 0, True, False),
    ("gt", 70, "71", False), ("gt", 70, MISSING, False),
    ("gte", 70, 69, False), ("gte", 70, 70, True), ("gte", 70, 70.0, True), ("gte", 70, 71, True),
    ("gte", 70, 69.5, False), ("gte", 0, 0, True), ("gte", 0, -1, False), ("gte", 1, True, False),
    ("gte", 70, MISSING, False),
    ("lt", 70, 69, True), ("lt", 70, 70, False), ("lt", 70, 71, False), ("lt", 70, 69.99, True),
    ("lt", 0, 0, False), ("lt", 0, -1, True), ("lt", 2, False, False), ("lt", 70, MISSING, False),
    ("lte", 70, 69, True), ("lte", 70, 70, True), ("lte", 70, 70.0, True), ("lte", 70, 71, False),
    ("lte", 70, 70.01, False), ("lte", 0, 0, True), ("lte", 70, "1", False), ("lte", 70, MISSING, False),
    ("eq", 70, 70, True), ("eq", 70, 70.0, True), ("eq", 70, 69, False), ("eq", 70, 71, False),
    ("eq", 70, "70", False), ("eq", 1, True, False), ("eq", True, True, True), ("eq", True, False, False),
    ("eq", False, 0, False), ("eq", "CA", "CA", True), ("eq", "CA", "ca", False), ("eq", "", "", True),
    ("eq", "CA", ["CA"], False), ("eq", "CA", MISSING, False), ("eq", 0, 0, True),
    ("ne", 70, 70, False), ("ne", 70, 70.0, False), ("ne", 70, 71, True), ("ne", 70, "70", True),
    ("ne", True, True, False), ("ne", True, 1, True), ("ne", "CA", "CA", False), ("ne", "CA", "US", True),
    ("ne", "CA", MISSING, False), ("ne", "CA", ["US"], False),
    ("in", [1, 2], 1, True), ("in", [1, 2], 2, True), ("in", [1, 2], 3, False), ("in", [1, 2], 0, False),
    ("in", [1, 2], "1", False), ("in", [1], True, False), ("in", ["CA", "US"], "US", True),
    ("in", ["CA", "US"], "DE", False), ("in", ["CA"], ["CA"], False), ("in", ["CA"], MISSING, False),
    ("contains", "CA", ["CA", "US"], True), ("contains", "CA", ["US", "CA"], True), ("contains", "CA", ["US"], False),
    ("contains", "CA", [], False), ("contains", "CA", "CA", False), ("contains", "CA", ["ca"], False),
    ("contains", "CA", MISSING, False),
    ("exists", True, 0, True), ("exists", True, "", True), ("exists", True, False, True), ("exists", True, [], True),
    ("exists", True, None, False), ("exists", True, MISSING, False),
    ("exists", False, MISSING, True), ("exists", False, None, True), ("exists", False, 0, False),
    ("exists", False, "x", False),
    ("matches", "pri.*", "pricing", True), ("matches", "pri.*", "pri", True), ("matches", "pri.*", "xpricing", False),
    ("matches", "pri.*", "pr", False), ("matches", "C.", "CA", True), ("matches", "C.", "C", False),
    ("matches", "C.", "CAN", False), ("matches", ".*", "", True), ("matches", ".*", 7, False),
    ("matches", ".*", MISSING, False),
]


@pytest.mark.parametrize(("op", "expected", "value", "holds"), BOUNDARIES)
def test_operator_boundaries_adapter_and_reference_agree(op: str, expected: object, value: object,
                                                         holds: bool) -> None:
    specs = [RuleSpec("r", {"fact": "lead.score", op: expected})]
    compiled = compile_rules(f"boundary_{next(_names)}", specs)
    facts: dict = {"lead": {} if value is MISSING else {"score": value}}
    # Decided by durable_rules itself: a leaf that failed to compile would fall back to the reference
    # evaluation and agree with it whatever the compiler did.
    assert compiled.fallback == []
    assert reference_evaluate(specs, facts) == (["r"] if holds else []), "reference"
    assert [m.rule for m in compiled.evaluate(facts)] == (["r"] if holds else []), "adapter"


def test_every_operator_has_boundary_examples() -> None:
    assert {op for op, *_ in BOUNDARIES} == {"gt", "gte", "lt", "lte", "eq", "ne", "in", "contains", "exists",
                                            "matches"}


@pytest.mark.parametrize(("cond", "problems"), [
    ({"fact": "a", "gt": 1}, []), ({"fact": "a", "gte": 1.5}, []), ({"fact": "a", "lt": -1}, []),
    ({"fact": "a", "lte": 0}, []), ({"fact": "a", "eq": True}, []), ({"fact": "a", "ne": 0.5}, []),
    ({"fact": "a", "in": ["x"]}, []), ({"fact": "a", "contains": 3}, []), ({"fact": "a", "exists": False}, []),
    ({"fact": "A_b.C9", "matches": "x+"}, []),
    *[({"fact": "a", op: bad}, [f"when: '{op}' needs a number"])
      for op in ("gt", "gte", "lt", "lte") for bad in ("5", True, None, [1])],
    ({"fact": "a", "in": []}, ["when: 'in' needs a non-empty list"]),
    ({"fact": "a", "in": "x"}, ["when: 'in' needs a non-empty list"]),
    ({"fact": "a", "exists": 1}, ["when: 'exists' needs true or false"]),
    ({"fact": "a", "contains": 1.5}, ["when: 'contains' needs a string or integer"]),
    ({"fact": "a", "contains": ["x"]}, ["when: 'contains' needs a string or integer"]),
    ({"fact": "a", "eq": ["x"]}, ["when: 'eq' needs a scalar"]),
    ({"fact": "a", "ne": {"x": 1}}, ["when: 'ne' needs a scalar"]),
    ({"fact": "a", "eq": None}, ["when: 'eq' needs a scalar"]),
    ("x", ["when: expected a mapping, got str"]),
    ({"fact": "1a", "eq": 1}, ["when: 'fact' must be a dotted name, got '1a'"]),
    ({"fact": "a..b", "eq": 1}, ["when: 'fact' must be a dotted name, got 'a..b'"]),
    ({"fact": "a", "eq": 1, "ne": 2},
     ["when: exactly one operator of eq, ne, gt, gte, lt, lte, in, contains, exists, matches is required, "
      "got ['eq', 'ne']"]),
    ({"all": [{"fact": "a", "eq": 1}], "fact": "b"}, ["when: 'all' cannot be combined with ['fact']"]),
    ({"any": []}, ["when.any: expected a non-empty list"]),
    ({"all": [{"fact": "a", "eq": 1}, {"any": [{"fact": "b", "gt": "x"}, 7]}]},
     ["when.all[1].any[0]: 'gt' needs a number", "when.all[1].any[1]: expected a mapping, got int"]),
])
def test_validate_condition_names_each_problem_and_where(cond: object, problems: list[str]) -> None:
    assert validate_condition(cond) == problems


def test_a_rule_set_whose_every_rule_is_too_large_still_registers_and_decides() -> None:
    huge = {"all": [{"any": [{"fact": f"f{i}", "eq": v} for v in range(3)]} for i in range(16)]}
    specs = [RuleSpec("huge", huge)]
    compiled = compile_rules(f"all_fallback_{next(_names)}", specs)
    assert [s.name for s in compiled.fallback] == ["huge"]
    assert [m.rule for m in compiled.evaluate({f"f{i}": 1 for i in range(16)})] == ["huge"]
    assert compiled.evaluate({"f0": 9}) == []


def test_remembered_answers_are_not_shared_by_facts_python_finds_equal() -> None:
    """Answers are remembered per distinct facts a rule set reads. 1, 1.0 and True are equal in Python
    (and hash alike) but not in the rule language; -0.0 equals 0.0 but explains as -0.0; a missing fact
    and a null one decide alike but a datetime is not its text. Asked in a row, each must get its own
    answer and its own facts, never the one remembered for the value before it."""
    from datetime import UTC, datetime

    specs = [RuleSpec("one", {"fact": "x", "eq": 1}), RuleSpec("yes", {"fact": "x", "eq": True}),
             RuleSpec("text", {"fact": "x", "eq": "1"}), RuleSpec("big", {"fact": "x", "gte": 0}),
             RuleSpec("here", {"fact": "x", "exists": True}), RuleSpec("deep", {"fact": "a.b", "contains": 1})]
    compiled = compile_rules(f"memo_{next(_names)}", specs)
    at = datetime(2026, 1, 5, 9, tzinfo=UTC)
    values: list[object] = [1, True, 1.0, "1", 0.0, -0.0, None, MISSING, 0, False, at, at.isoformat(),
                            [1], [True], {"b": [1]}, {"b": [True]}]
    for value in values + values[::-1]:
        facts = {} if value is MISSING else {"x": value, "a": value}
        found = compiled.evaluate(facts)
        assert [m.rule for m in found] == reference_evaluate(specs, facts), value
        for m in found:
            if m.rule != "deep":
                read = m.facts["x"]
                assert type(read) is type(value) and repr(read) == repr(value), (value, read)


def test_a_fact_only_tested_for_presence_is_asked_once_per_presence_and_explained_by_its_value() -> None:
    """A fact rules only test with `exists` (a lead's id) decides by whether it holds a value: the engine
    is asked once for every id, and each match still reads the lead's own id."""
    specs = [RuleSpec("known", {"all": [{"fact": "lead.id", "exists": True}, {"fact": "lead.ok", "eq": True}]}),
             RuleSpec("anonymous", {"fact": "lead.id", "exists": False}),
             # Tested for presence and for its value: its value decides.
             RuleSpec("tiered", {"fact": "lead.tier", "exists": True}),
             RuleSpec("gold", {"fact": "lead.tier", "eq": "gold"})]
    compiled = compile_rules(f"presence_{next(_names)}", specs)
    for ident in ["l-1", "l-2", None, MISSING, 7, "", {}, [], {"x": 1}, "l-3", None]:
        for ok, tier in ((True, "gold"), (False, "silver"), (True, "silver"), (False, "gold")):
            facts = {"lead": {"ok": ok, "tier": tier} if ident is MISSING else {"ok": ok, "tier": tier, "id": ident}}
            found = compiled.evaluate(facts)
            assert [m.rule for m in found] == reference_evaluate(specs, facts), facts
            for m in found:
                if m.rule in ("known", "anonymous"):
                    assert m.facts["lead.id"] == (None if ident is MISSING else ident)
    assert len(compiled._decisions) == 8  # (present, absent) x (ok, not ok) x (gold, silver)


class _Facts(dict):  # a dict that is not exactly a dict, as a Mapping the adapter is handed may be
    pass


@pytest.mark.parametrize("parts", [("a",), ("a", "b"), ("a", "b", "c"), ("a", "b", "c", "d")])
@pytest.mark.parametrize("facts", [
    {}, {"a": None}, {"a": 1}, {"a": True}, {"a": 1.0}, {"a": "x"}, {"a": [1, "x"]}, {"a": {}},
    {"a": {"b": False}}, {"a": {"b": {"c": {"d": 0}}}}, {"a": {"b": {"c": "z"}}}, {"a": {"b": "text"}},
    {"a": {"b": {"c": {}}}}, {"a": {"b": {}}}, {"a": {"b": {"x": 1}}}, {"a": _Facts(b=_Facts(c=2))},
    _Facts(a={"b": {"c": {"d": "deep"}}}),
    {"a": {"b": {"c": {"d": {"e": 1}}}}}, {"b": 1},
])
def test_a_path_key_function_answers_as_the_walk_does(parts: tuple[str, ...], facts: dict) -> None:
    """The memo key of each path is worked out by a function written out for paths of one to three
    names: it must say what the general walk says whatever it meets (nothing, a value, a list, a
    Mapping that is not a dict) at any depth, as equal keys mean the same answer."""
    from nurture.rules import _path_key, _path_key_of

    assert _path_key_of(parts)(facts) == _path_key(facts, parts)
