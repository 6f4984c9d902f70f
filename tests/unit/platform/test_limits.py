"""nurture.limits: what breaks a limit is found by path, whatever its nesting; parse errors about
limits are told apart from text that is not JSON; stored values degrade to a placeholder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nurture import limits


def test_each_limit_is_found_by_path() -> None:
    value = {"ok": [True, None, 1.5, "text", {"n": 2**53 - 1}],
             "nul": "a\x00b", "surrogate": "x\ud800", "big": 2**53, "nan": float("nan"),
             "long": "x" * (limits.MAX_STRING_CHARS + 1), "deep": [[[[]]]], "keys": {str(i): i for i in range(1001)}}
    problems = limits.problems_in(value, max_depth=3)
    assert set(problems) == {"nul", "surrogate", "big", "nan", "long", "deep[0][0]", "keys"}
    assert problems["deep[0][0]"] == "nests deeper than 3 levels"
    assert limits.problems_in({"a": [1, {"b": "c"}]}) == {}


def test_messages_never_repeat_a_bad_key() -> None:
    problems = limits.problems_in({"\ud800" * 3: 1, "k" * 300: 2})
    for path in problems:
        path.encode("utf-8")  # printable, encodable: an error body can carry it
        assert len(path) < 130


def test_any_nesting_is_checked_without_recursion() -> None:
    value: list = []
    for _ in range(100_000):
        value = [value]
    assert "nests deeper" in next(iter(limits.problems_in(value).values()))


@pytest.mark.parametrize(("text", "malformed"), [
    (b"[" * 5000 + b"]" * 5000, False), (b'"\\ud800"', False), (b"1e400", False),
    (b"NaN", True), (b"{", True), (b"\xff", True),
])
def test_parse_errors_say_whether_the_text_is_json(text: bytes, malformed: bool) -> None:
    with pytest.raises(limits.InputError) as err:
        limits.parse_json(text)
    assert err.value.malformed is malformed


def test_times_outside_the_range_are_refused_with_any_offset() -> None:
    for value in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1899-12-31T23:59:59Z",
                  "2026-01-01T00:00:00", "not a time", "x" * 100):
        with pytest.raises(limits.InputError):
            limits.parse_time(value, "at")
    assert limits.parse_time("2026-01-01T09:00:00+05:30", "at").isoformat() == "2026-01-01T03:30:00+00:00"


def test_a_range_bound_is_a_time_or_a_plain_date_in_utc() -> None:
    """A date is its day in UTC: `from` its first instant, `to` (end) its last, so that it includes the day."""
    assert limits.parse_bound("2026-01-05", "from", end=False).isoformat() == "2026-01-05T00:00:00+00:00"
    assert limits.parse_bound("2026-01-05", "to", end=True).isoformat() == "2026-01-05T23:59:59.999999+00:00"
    assert limits.parse_bound("2026-01-05T09:00:00+01:00", "to", end=True).isoformat() == "2026-01-05T08:00:00+00:00"
    for value in ("2026-02-30", "2026-1-05", "1899-12-31", "20260105", "2026-01-05T09:00:00"):
        with pytest.raises(limits.InputError) as err:
            limits.parse_bound(value, "to", end=True)
        assert list(err.value.problems) == ["to"]


def test_stored_values_degrade_to_a_placeholder() -> None:
    assert limits.read_json('{"a": "\\ud800"}', what="x") == limits.placeholder("x")
    assert limits.read_json("{nope", what="x") == limits.placeholder("x")
    assert limits.read_json('{"a": 1}', what="x") == {"a": 1}
    assert limits.readable({"a": "[" * 40}, what="x") == {"a": "[" * 40}
    deep: list = []
    for _ in range(40):
        deep = [deep]
    assert limits.UNREADABLE_KEY in limits.readable({"a": deep}, what="x")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children), max_leaves=30)


@given(json_values)
def test_whatever_passes_the_limits_serialises_as_strict_json(value: object) -> None:
    import orjson

    if not limits.problems_in(value):
        assert orjson.loads(orjson.dumps(value)) == value
