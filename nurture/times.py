"""Times in the mesh are UTC: the helpers that read, store and write them, once.

A naive datetime is UTC (SQLite hands every stored time back naive); an aware one in another zone is
converted, never relabelled (relabelling 09:00+02:00 as 09:00 UTC moves it by two hours). Strict
parsing of client input, with its error messages, is `nurture.limits.parse_time`; `parse_utc` here
reads what the mesh itself wrote.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime


def utc(value: datetime) -> datetime:
    """The same instant in UTC; a naive value is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def naive_utc(value: datetime) -> datetime:
    """The naive UTC form a `DateTime` column without a zone stores."""
    return utc(value).replace(tzinfo=None)


def parse_utc(value: object) -> datetime | None:
    """A stored RFC 3339 text (a `Z` suffix included) or datetime, in UTC; None when absent or malformed."""
    if type(value) is str:  # what is read most (the journeys engine's stored times): straight to the memo
        return _parse_text(value) if value else None
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return utc(value)
    return _parse_text(str(value))


@functools.lru_cache(maxsize=4096)
def _parse_text(text: str) -> datetime | None:
    # Remembered: the journeys engine reads the same stored times again and again (the budget's
    # recent sends, trigger cooldowns, clocks), and a datetime is immutable.
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return utc(parsed)


_last_written: tuple[datetime | None, str] = (None, "")


def rfc3339(value: datetime) -> str:
    """The RFC 3339 text the API shows: in UTC, with `Z` (`2026-11-22T09:00:00Z`)."""
    global _last_written
    # The journeys engine writes one instant (the `now` it is handed) many times in a row: the same
    # object's text is kept. By identity, as a datetime is immutable and the pair holds it alive;
    # one tuple, read and replaced whole, so threads never see a time with another's text.
    last = _last_written
    if value is last[0]:
        return last[1]
    original = value
    if value.tzinfo is not UTC:  # (a UTC time is its own UTC form: the journeys engine writes many)
        value = utc(value)
    text = value.isoformat().replace("+00:00", "Z")
    _last_written = (original, text)
    return text


def rfc3339_or_none(value: datetime | None) -> str | None:
    return None if value is None else rfc3339(value)
