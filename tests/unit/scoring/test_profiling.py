"""Progressive profiling, pure: the next fields in the data file's order, and answers checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from nurture.datafiles import DataFileError
from services.scoring.domain.profiling import check_answers, load_profiling, next_fields


def test_the_next_fields_are_the_unknown_ones_in_priority_order() -> None:
    p = load_profiling()
    keys = [f.key for f in p.fields]
    assert keys[:3] == ["email", "first_name", "countries_of_interest"]
    assert [f.key for f in next_fields(p, {})] == keys[:p.ask_at_most]
    known = {"email": "a@example.com", "first_name": "", "attributes": {"countries_of_interest": ["CA"]}}
    assert [f.key for f in next_fields(p, known, 2)] == ["first_name", "profession"]
    everything = {"email": "a@example.com", "first_name": "A",
                  "attributes": {f.key: "x" for f in p.fields}}
    assert next_fields(p, everything, 5) == []


def test_answers_are_checked_against_each_fields_kind() -> None:
    p = load_profiling()
    clean, problems = check_answers(p, {"email": " a@example.com ", "countries_of_interest": ["CA", "CA", "AU"],
                                        "moving_with_family": True, "family_size": 3, "timeline": "urgent"})
    assert problems == {} and clean["email"] == "a@example.com" and clean["countries_of_interest"] == ["CA", "AU"]
    _, problems = check_answers(p, {"email": "nope", "countries_of_interest": ["XX"], "moving_with_family": "yes",
                                    "family_size": 0, "timeline": 3, "first_name": "", "unknown": 1})
    assert set(problems) == {"email", "countries_of_interest", "moving_with_family", "family_size", "timeline",
                             "first_name", "unknown"}
    for empty in ({}, [], "x", None):
        assert check_answers(p, empty)[1]


def test_a_bad_profiling_file_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "profiling.yaml"
    bad.write_text("ask_at_most: 2\nfields:\n  - {key: a, label: A, kind: choice}\n"
                   "  - {key: a, label: B, kind: text}\n")
    with pytest.raises(DataFileError) as err:
        load_profiling(bad)
    assert len(err.value.problems) == 2
