"""nurture.datafiles: one way to read a data file, one error listing every problem as "where: what"."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from nurture.datafiles import DataFileError, Seconds, Strict, TimeOfDay, WholeAtLeast1, load, read_yaml, validate


class Item(Strict):
    name: str = Field(min_length=1)


class Example(Strict):
    start: TimeOfDay
    cap: WholeAtLeast1 = 3
    gap_s: Seconds = 0.0
    items: list[Item] = Field(default_factory=list)


def test_every_problem_is_listed_in_the_files_key_order(tmp_path: Path) -> None:
    path = tmp_path / "example.yaml"
    path.write_text('gap_s: -1\nburst: 2\nstart: "late"\ncap: true\nitems: [{name: ""}, {nme: x}]\n')
    with pytest.raises(DataFileError) as err:
        load(Example, path)
    assert err.value.problems == [
        "gap_s: must be a number of seconds, 0 or more",
        "burst: unknown key",
        "start: 'late' is not a time of day (HH:MM)",
        "cap: must be a whole number of at least 1",
        "items[0].name: string should have at least 1 character",
        "items[1].name: field required",
        "items[1].nme: unknown key",
    ]
    assert str(err.value) == f"{path}: " + "; ".join(err.value.problems)
    assert err.value.source == str(path) and err.value.details == {"problems": err.value.problems}


def test_a_valid_file_is_its_model(tmp_path: Path) -> None:
    path = tmp_path / "example.yaml"
    path.write_text('start: "09:30"\ngap_s: 5\nitems: [{name: a}]\n')
    example = load(Example, path)
    assert (str(example.start), example.cap, example.gap_s, example.items[0].name) == ("09:30:00", 3, 5.0, "a")


def test_where_and_the_name_of_an_unknown_key_are_the_callers() -> None:
    with pytest.raises(DataFileError) as err:
        validate(Example, {"start": "08:00", "x": 1}, where="_settings.yaml", unknown="not a setting")
    assert err.value.problems == ["_settings.yaml x: not a setting"]
    assert str(err.value) == "_settings.yaml x: not a setting"  # no source: the message is the problems


def test_a_file_that_is_not_yaml_or_not_there_is_a_data_file_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("a: [1,\n")
    with pytest.raises(DataFileError, match="broken.yaml"):
        read_yaml(path)
    with pytest.raises(DataFileError, match="nope.yaml"):
        read_yaml(tmp_path / "nope.yaml")
    assert read_yaml(tmp_path / "nope.yaml", missing=None) is None
    path.write_text("# only a comment\n")
    assert read_yaml(path, empty={}) == {}


def test_the_error_is_still_a_value_error() -> None:
    # Callers of the old per-file errors (ValueError subclasses) still catch it.
    assert issubclass(DataFileError, ValueError)
