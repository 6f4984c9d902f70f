"""Input limits: how deep, long, large and strange input may be, in one place (docs/INPUT-LIMITS.md).

The gateway checks every request against these numbers, and every service checks every gRPC request
again (`nurture.rpcguard`): a service never trusts its caller. What breaks a limit is refused with a
short message naming the field (`InputError.problems`), before anything is stored. The base is I-JSON
(RFC 7493): UTF-8 text without lone surrogates, numbers a double can hold; on top of that, sizes.

Reads go the other way (`read_json`, `readable`): a value already stored that breaks the limits (a row
written before they existed, or by hand) is shown as a marked placeholder and logged, so one bad row
never makes a lead, its timeline or a list unreadable.

Exceptions: `InputError(ValueError)` with `problems` ({field path: what is wrong}) and `malformed`
(True: not JSON at all, HTTP 400; False: JSON that breaks a limit, HTTP 422).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime
from typing import TypeAlias

import orjson

from nurture.jsontypes import JsonValue

log = logging.getLogger(__name__)

# -- the limits ------------------------------------------------------------------------------------
MAX_DEPTH = 32                   # nesting of one JSON document (a body, a definition, attributes)
MAX_STRING_CHARS = 65_536        # one string value (HubSpot caps a property at 65,536 too)
MAX_KEY_CHARS = 256              # one object key
MAX_KEYS = 1_000                 # keys of one object
MAX_ITEMS = 10_000               # items of one array
MAX_NODES = 200_000              # values in one document (YAML aliases can multiply a small text)
MAX_DOCUMENT_BYTES = 1_048_576   # one JSON document carried in a gRPC string field (`*_json`)
MAX_SAFE_INTEGER = 2**53 - 1     # I-JSON: integers beyond it lose digits in JavaScript and doubles
MAX_PROBLEMS = 20                # problems reported per document; the rest are summarised
INT32_MAX = 2**31 - 1            # proto int32 fields (versions, limits, scores)
INT32_MIN = -(2**31)
# Times: RFC 3339 with a zone, inside this range once in UTC. Protobuf's Timestamp stops at the years
# 1 and 9999 and date arithmetic needs room either side; no lead's history is older or later.
TIME_MIN = datetime(1900, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(9000, 1, 1, tzinfo=UTC)

UNREADABLE_KEY = "_unreadable"


class InputError(ValueError):
    """Input that breaks a limit; `problems` maps a field path to what is wrong with it."""

    def __init__(self, problems: dict[str, str], *, malformed: bool = False) -> None:
        super().__init__("; ".join(f"{k} {v}" for k, v in problems.items()))
        self.problems = problems
        self.malformed = malformed


def shown(key: object) -> str:
    """A key or value as it may appear in an error message or a log: short, printable ASCII-safe text
    (an error that repeated a lone surrogate back would itself be unserialisable)."""
    text = key if isinstance(key, str) else str(key)
    if len(text) <= 64 and text.isprintable() and text_problem(text) is None:
        return text
    return ascii(text[:40]) + ("..." if len(text) > 40 else "")


def text_problem(value: str, max_chars: int = MAX_STRING_CHARS) -> str | None:
    """What is wrong with one string, or None: too long, a NUL (PostgreSQL text cannot hold one), or a
    lone surrogate (not Unicode text: nothing can encode it as UTF-8)."""
    if len(value) > max_chars:
        return f"is longer than {max_chars} characters"
    if "\x00" in value:
        return "holds a NUL character (U+0000)"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "holds a lone surrogate code point (U+D800-U+DFFF), which is not Unicode text"
    return None


def _join(path: str, key: str) -> str:
    joined = f"{path}.{key}" if path else key
    return joined if len(joined) <= 120 else joined[:60] + "..." + joined[-40:]


def _path(parent: str, key: str | int | None) -> str:
    if isinstance(key, int):
        joined = f"{parent}[{key}]"
        return joined if len(joined) <= 120 else joined[:60] + "..." + joined[-40:]
    return _join(parent, shown(key)) if key is not None else parent


# Where a value sits, rendered only when a problem is reported: a field path, or (its container's
# place, its key or index) for a value inside a container.
_Place: TypeAlias = "str | tuple[_Place, str | int]"


def _render(place: _Place) -> str:
    """The field path of a place, as `_path` joins it level by level from the root."""
    keys: list[str | int] = []
    while not isinstance(place, str):
        place, key = place
        keys.append(key)
    path = place
    for key in reversed(keys):
        path = _path(path, key)
    return path


def problems_in(value: JsonValue, *, field: str = "", max_depth: int = MAX_DEPTH) -> dict[str, str]:
    """Every way a parsed JSON (or YAML) value breaks the limits, by field path; {} when it keeps them.
    Iterative, so any nesting is safe to check, and bounded by MAX_NODES. Paths are built only for
    problems (a value's place is a pair of its container's and its key until then): this runs on every
    accepted event and every collect request."""
    problems: dict[str, str] = {}
    # (the place of this value, its depth)
    stack: list[tuple[_Place, JsonValue, int]] = [(field, value, 1)]
    nodes = 0
    while stack and len(problems) < MAX_PROBLEMS:
        place, v, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            problems[field or "body"] = f"holds more than {MAX_NODES} values"
            break
        kind = type(v)
        if kind is str:
            if len(v) <= MAX_STRING_CHARS and v.isascii() and "\x00" not in v:
                continue
            problem = text_problem(v)
            if problem:
                problems[_render(place) or "body"] = problem
        elif v is None or kind is bool:
            continue
        elif kind is int or isinstance(v, int):
            if not -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
                problems[_render(place) or "body"] = f"is an integer beyond +/-{MAX_SAFE_INTEGER} (2^53-1)"
        elif kind is float:
            if v != v or v in (float("inf"), float("-inf")):
                problems[_render(place) or "body"] = "is not a finite number"
        elif kind is dict or kind is list or isinstance(v, dict | list):
            if depth > max_depth:
                problems[_render(place) or "body"] = f"nests deeper than {max_depth} levels"
                continue
            if isinstance(v, dict):
                if len(v) > MAX_KEYS:
                    problems[_render(place) or "body"] = f"has more than {MAX_KEYS} keys"
                    continue
                for k, item in v.items():
                    if type(k) is not str:
                        problems[_join(_render(place), shown(k))] = "has a key that is not a string"
                        continue
                    if len(k) > 64 or not k.isascii() or "\x00" in k:
                        problem = text_problem(k, MAX_KEY_CHARS)
                        if problem:
                            problems[_path(_render(place), k)] = f"key {problem}"
                            continue
                    stack.append(((place, k), item, depth + 1))
            else:
                if len(v) > MAX_ITEMS:
                    problems[_render(place) or "body"] = f"has more than {MAX_ITEMS} items"
                    continue
                stack.extend(((place, i), item, depth + 1) for i, item in enumerate(v))
        elif isinstance(v, datetime | date):
            continue  # YAML times: sent on as their text
        elif isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                problems[_render(place) or "body"] = "is not a finite number"
        else:
            problems[_render(place) or "body"] = f"is not a JSON value ({type(v).__name__})"
    if len(problems) >= MAX_PROBLEMS:
        problems["..."] = f"more than {MAX_PROBLEMS} problems; the first are listed"
    return problems


def _parse(text: str | bytes, field: str) -> JsonValue:
    """JSON text → value, with the parse errors that are about limits (depth, surrogates, numbers)
    told apart from text that is not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
        name = field or "body"
        if "depth limit" in reason or "recursion" in reason:
            raise InputError({name: f"nests deeper than {MAX_DEPTH} levels"}) from exc
        if "surrogate" in reason:
            # Valid JSON syntax, invalid text: read it with the standard parser so that a batch can
            # name the one item that holds it (the walk reports the surrogate by path).
            try:
                return json.loads(text)
            except RecursionError as deep:
                raise InputError({name: f"nests deeper than {MAX_DEPTH} levels"}) from deep
            except ValueError as bad:
                raise InputError({name: f"is not valid JSON: {shown(str(bad))}"}, malformed=True) from bad
        if "infinity" in reason or "overflow" in reason.lower():
            raise InputError({name: "holds a number out of range"}) from exc
        raise InputError({name: f"is not valid JSON: {reason}"}, malformed=True) from exc


def parse_json(text: str | bytes, *, field: str = "", check: bool = True, max_bytes: int | None = None) -> JsonValue:
    """A JSON document checked against the limits, or InputError. `check=False` parses only (a
    batch checks each item itself, so that one bad item fails alone)."""
    if max_bytes is not None and len(text) > max_bytes:
        raise InputError({field or "body": f"is larger than {max_bytes} bytes"})
    value = _parse(text, field)
    if check:
        problems = problems_in(value, field=field)
        if problems:
            raise InputError(problems)
    return value


def check_int(value: int, field: str, *, low: int = INT32_MIN, high: int = INT32_MAX) -> dict[str, str]:
    """{field: problem} when an integer does not fit the proto field it is going to (int32 by default)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return {field: f"must be an integer from {low} to {high}"}
    return {}


def check_time(value: datetime, field: str) -> dict[str, str]:
    """{field: problem} when a time is outside TIME_MIN..TIME_MAX (it must be tz-aware)."""
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        utc = None
    if utc is None or not TIME_MIN <= utc <= TIME_MAX:
        return {field: f"must be between {TIME_MIN.date()} and {TIME_MAX.date()} (UTC)"}
    return {}


def parse_time(value: str, field: str) -> datetime:
    """An RFC 3339 time with a zone, in UTC and within the time range; InputError otherwise."""
    if not isinstance(value, str) or len(value) > 64:
        raise InputError({field: "must be an RFC 3339 time string"})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise InputError({field: f"is not an RFC 3339 time: {shown(value)}"}) from exc
    if parsed.tzinfo is None:
        raise InputError({field: "needs a time zone (e.g. Z)"})
    problems = check_time(parsed, field)
    if problems:
        raise InputError(problems)
    return parsed.astimezone(UTC)



def parse_bound(value: str, field: str, *, end: bool) -> datetime:
    """A report range's bound (`from`, `to`): an RFC 3339 time as parse_time reads it, or a plain date
    (YYYY-MM-DD) taken in UTC, as that day's start, or with `end` its last instant, so that a date-only
    `to` includes its day as a reader of "from 2026-01-01 to 2026-01-31" expects. InputError otherwise."""
    if isinstance(value, str) and len(value) == 10 and value[4:5] == value[7:8] == "-":
        try:
            day = date.fromisoformat(value)
        except ValueError as exc:
            raise InputError({field: f"is not a date (YYYY-MM-DD) or an RFC 3339 time: {shown(value)}"}) from exc
        bound = datetime(day.year, day.month, day.day, tzinfo=UTC)
        if end:
            bound = bound.replace(hour=23, minute=59, second=59, microsecond=999999)
        problems = check_time(bound, field)
        if problems:
            raise InputError(problems)
        return bound
    return parse_time(value, field)

# -- reading what is stored ------------------------------------------------------------------------

def placeholder(what: str) -> dict[str, str]:
    """The marked value shown instead of a stored value that cannot be shown."""
    return {UNREADABLE_KEY: f"this stored {what} breaks the input limits and is not shown (docs/INPUT-LIMITS.md)"}


def read_json(text: str | bytes | None, *, what: str, default: JsonValue = None) -> JsonValue:
    """A stored JSON text as a value that every reader can serialise again; a marked placeholder (and
    a log line) when the text is not strict JSON. Costs one orjson parse on the usual path."""
    if not text:
        return {} if default is None else default
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        log.warning("unreadable stored %s replaced by a placeholder: %s", what, exc)
        return placeholder(what)


def readable(value: JsonValue, *, what: str) -> JsonValue:
    """`value` when it keeps the limits, else a marked placeholder (logged): for values shown to
    readers (the API, other services), so a bad stored value degrades instead of failing the read."""
    problems = problems_in(value)
    if not problems:
        return value
    log.warning("stored %s breaks the input limits, shown as a placeholder: %s", what,
                "; ".join(f"{k} {v}" for k, v in list(problems.items())[:3]))
    return placeholder(what)
