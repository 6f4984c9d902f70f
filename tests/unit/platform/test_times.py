"""nurture.times: every time in the mesh is UTC; naive means UTC, another zone is converted, not relabelled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from nurture import times

PARIS_SUMMER = timezone(timedelta(hours=2))


def test_an_aware_time_in_another_zone_is_converted_not_relabelled() -> None:
    converted = times.utc(datetime(2026, 7, 1, 9, 0, tzinfo=PARIS_SUMMER))
    assert converted == datetime(2026, 7, 1, 7, 0, tzinfo=UTC) and converted.tzinfo is UTC


def test_a_naive_time_is_utc() -> None:
    assert times.utc(datetime(2026, 7, 1, 9, 0)) == datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
    assert times.utc_or_none(None) is None


def test_naive_utc_is_what_a_zoneless_column_stores() -> None:
    stored = times.naive_utc(datetime(2026, 7, 1, 9, 0, tzinfo=PARIS_SUMMER))
    assert stored == datetime(2026, 7, 1, 7, 0) and stored.tzinfo is None
    assert times.utc(stored) == datetime(2026, 7, 1, 7, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-22T09:00:00Z", datetime(2026, 11, 22, 9, 0, tzinfo=UTC)),
    ("2026-11-22T09:00:00z", datetime(2026, 11, 22, 9, 0, tzinfo=UTC)),
    ("2026-11-22T09:00:00+00:00", datetime(2026, 11, 22, 9, 0, tzinfo=UTC)),
    ("2026-11-22T11:30:00+02:30", datetime(2026, 11, 22, 9, 0, tzinfo=UTC)),
    ("2026-11-22T09:00:00", datetime(2026, 11, 22, 9, 0, tzinfo=UTC)),  # no zone: UTC, as the mesh writes
    (datetime(2026, 11, 22, 9, 0), datetime(2026, 11, 22, 9, 0, tzinfo=UTC)),
])
def test_parse_utc_reads_what_the_mesh_wrote(text: object, expected: datetime) -> None:
    parsed = times.parse_utc(text)
    assert parsed == expected and parsed is not None and parsed.tzinfo is UTC


@pytest.mark.parametrize("text", [None, "", "not a time", "2026-13-40T00:00:00Z", 17])
def test_parse_utc_is_none_for_what_is_not_a_time(text: object) -> None:
    assert times.parse_utc(text) is None


def test_rfc3339_is_utc_with_z() -> None:
    assert times.rfc3339(datetime(2026, 7, 1, 9, 0, tzinfo=PARIS_SUMMER)) == "2026-07-01T07:00:00Z"
    assert times.rfc3339(datetime(2026, 7, 1, 9, 0, 0, 5)) == "2026-07-01T09:00:00.000005Z"
    assert times.rfc3339_or_none(None) is None


def test_remembered_texts_follow_the_instant_not_the_written_fields() -> None:
    """parse_utc remembers its answers, rfc3339 takes a UTC time as it is: a time written with the same
    fields in another zone, or naive, is another instant and gets its own text; a subclass prints itself."""
    class Shown(datetime):
        def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
            return "shown:" + super().isoformat(sep, timespec)

    utc_nine = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
    assert times.rfc3339(utc_nine) == "2026-07-01T09:00:00Z"
    assert times.rfc3339(datetime(2026, 7, 1, 9, 0, tzinfo=PARIS_SUMMER)) == "2026-07-01T07:00:00Z"
    assert times.rfc3339(datetime(2026, 7, 1, 9, 0)) == "2026-07-01T09:00:00Z"
    assert times.rfc3339(Shown(2026, 7, 1, 9, 0, tzinfo=UTC)) == "shown:2026-07-01T09:00:00Z"
    assert times.parse_utc("2026-07-01T09:00:00+02:00") == datetime(2026, 7, 1, 7, 0, tzinfo=UTC)
    assert times.parse_utc("2026-07-01T09:00:00Z") == utc_nine
    assert times.parse_utc("2026-07-01T09:00:00+02:00") == datetime(2026, 7, 1, 7, 0, tzinfo=UTC)
    assert times.parse_utc("not a time") is None and times.parse_utc("not a time") is None


def test_rfc3339_written_again_is_the_same_text_and_another_time_its_own() -> None:
    """rfc3339 remembers the texts it wrote (the engine writes one `now` many times): the same time
    gives its text again, the same instant written in another zone the same text, and any other
    time, equal fields in another zone or naive included, its own."""
    nine = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
    assert times.rfc3339(nine) == "2026-07-01T09:00:00Z"
    assert times.rfc3339(nine) == "2026-07-01T09:00:00Z"
    assert times.rfc3339(datetime(2026, 7, 1, 9, 0, tzinfo=PARIS_SUMMER)) == "2026-07-01T07:00:00Z"
    assert times.rfc3339(datetime(2026, 7, 1, 11, 0, tzinfo=PARIS_SUMMER)) == "2026-07-01T09:00:00Z"
    assert times.rfc3339(datetime(2026, 7, 1, 9, 0, 1, tzinfo=UTC)) == "2026-07-01T09:00:01Z"
    assert times.rfc3339(datetime(2026, 7, 1, 7, 0)) == "2026-07-01T07:00:00Z"
    assert times.rfc3339(nine) == "2026-07-01T09:00:00Z"
