"""Times in the mesh are UTC: the helpers that read, store and write them, once.

A naive datetime is UTC (SQLite hands every stored time back naive); an aware one in another zone is
converted, never relabelled (relabelling 09:00+02:00 as 09:00 UTC moves it by two hours). Strict
parsing of client input, with its error messages, is `nurture.limits.parse_time`; `parse_utc` here
reads what the mesh itself wrote.
"""

from __future__ import annotations

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
        if not value:
            return None
        try:
            return _read[value]
        except KeyError:  # (costly, but a text not remembered is parsed anyway)
            return _parse_text(value)
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return utc(value)
    return _parse_text(str(value))


# Texts read and written are remembered (4,096 of each, then forgotten at once): the journeys engine
# reads the same stored times again and again (the budget's recent sends, trigger cooldowns, clocks)
# and writes the same few instants (the `now` it is handed, a clock's start), and a datetime is
# immutable. A text rfc3339 writes is remembered as read too: what the engine writes into a lead's
# state (a send, a clock's due time) is read back at once by the budget and the timers.
_KEPT = 4096
_read: dict[str, datetime | None] = {}
_written: dict[datetime, str] = {}


def _parse_text(text: str) -> datetime | None:
    try:
        parsed: datetime | None = utc(datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")))
    except ValueError:
        parsed = None
    if len(_read) >= _KEPT:
        _read.clear()
    _read[text] = parsed
    return parsed


def rfc3339(value: datetime) -> str:
    """The RFC 3339 text the API shows: in UTC, with `Z` (`2026-11-22T09:00:00Z`)."""
    if type(value) is datetime:  # (a subclass may show itself otherwise)
        # Equal datetimes are one instant, so one UTC text; a naive time and an aware one are never equal.
        text = _written.get(value)
        if text is None:
            if len(_written) >= _KEPT:
                _written.clear()
            text = _written[value] = _text(value)
            if value.tzinfo is UTC and not value.fold:  # (the text reads back as this very value)
                if len(_read) >= _KEPT:
                    _read.clear()
                _read[text] = value
        return text
    return _text(value)


def _text(value: datetime) -> str:
    if value.tzinfo is not UTC:  # (a UTC time is its own UTC form: the journeys engine writes many)
        value = utc(value)
    return value.isoformat().replace("+00:00", "Z")


def rfc3339_or_none(value: datetime | None) -> str | None:
    return None if value is None else rfc3339(value)
