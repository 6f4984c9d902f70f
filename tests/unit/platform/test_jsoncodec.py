"""The hot-path JSON codec reads and writes what the standard library does, fast or not."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from nurture import jsoncodec


@pytest.mark.parametrize("value", [
    {"a": 1, "b": [1.5, "x", None, True], "nested": {"k": "ü€"}},
    {"big": 2**80},  # orjson refuses integers past 64 bits
    {1: "int key"},  # and non-string keys
    [],
])
def test_what_it_writes_reads_back_as_json_would(value: object) -> None:
    text = jsoncodec.dumps(value)
    assert json.loads(text) == json.loads(json.dumps(value))
    assert jsoncodec.loads(text) == json.loads(text)


def test_datetimes_are_written_as_str_gives_them() -> None:
    at = datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=UTC)
    assert jsoncodec.loads(jsoncodec.dumps({"at": at}, default=str)) == {"at": str(at)}
    with pytest.raises(TypeError):
        jsoncodec.dumps({"at": at})  # as json.dumps without a default


def test_it_reads_what_the_standard_library_wrote() -> None:
    assert jsoncodec.loads('{"x": NaN, "big": 123456789012345678901234567890}')["big"] == 123456789012345678901234567890
    assert jsoncodec.loads(b'{"a": [1, 2]}') == {"a": [1, 2]}


@pytest.mark.parametrize("text", ["", "{", "nope", b"\xff\xfe{"])
def test_bad_json_raises_a_value_error(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        jsoncodec.loads(text)
