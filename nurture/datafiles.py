"""The one way a service reads its data files (services/*/data/*.yaml): YAML in, a pydantic model out,
and one error, `DataFileError`, that lists every problem of the file as "where: what" strings.

A service reads its files at start-up, so a bad file fails the start with all of its problems at once
(an operator fixes the file in one go, not one complaint per restart). Files with cross-references (the
journey definitions, the scoring model) keep their own semantic checks on top, and raise subclasses of
`DataFileError` (`DefinitionError`, `nurture.rules.InvalidRule`) with the same `problems` list.

    raw = read_yaml(path)                      # DataFileError when unreadable or not YAML
    policy = validate(PolicyFile, raw, path)   # DataFileError listing every problem
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import time
from pathlib import Path
from typing import Annotated, TypeGuard, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from nurture.errors import InvalidArgument
from nurture.jsontypes import JsonValue

M = TypeVar("M", bound=BaseModel)


# A data file refused through the API (a journey definition, a scoring model) is the caller's to fix, a
# 422 with `details.problems`. ValueError stays a base so callers that caught the old per-file errors
# (PolicyError, ConfigError were ValueErrors) still do.
class DataFileError(InvalidArgument, ValueError):
    """A data file (or a document of that kind sent through the API) that cannot be used.

    `problems` lists every reason as "where: what"; `source` names the file when there is one, and
    the message is `"<source>: " + "; ".join(problems)`. It is the error hierarchy's invalid argument
    (a servicer that lets it through answers INVALID_ARGUMENT with every problem in `details`), and
    still a ValueError for the callers that read a data file as a value."""

    code = "invalid_data"

    def __init__(self, problems: Sequence[str], source: str | Path | None = None) -> None:
        self.problems = list(problems)
        self.source = str(source) if source is not None else None
        text = "; ".join(self.problems)
        super().__init__(f"{self.source}: {text}" if self.source else text, details={"problems": self.problems})


def read_yaml(path: Path, *, missing: JsonValue = ..., empty: JsonValue = None) -> JsonValue:
    """The parsed document of `path`; `missing` when the file does not exist (when given), `empty` when
    it holds no document. A file that cannot be read or parsed is a DataFileError naming it."""
    if missing is not ... and not path.exists():
        return missing
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataFileError([str(exc)], path) from exc
    return empty if document is None else document


def validate(model: type[M], raw: JsonValue, source: str | Path | None = None, *, where: str = "",
             unknown: str = "unknown key") -> M:
    """`raw` as `model`, or a DataFileError listing every problem, each prefixed with `where` (e.g. a
    file name when several files share one error) and ordered as the keys appear in the file.
    `unknown` is what an unexpected key (a model with extra="forbid") is called."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise DataFileError(problems_of(exc, raw, where=where, unknown=unknown), source) from None


def load(model: type[M], path: Path, *, where: str = "", unknown: str = "unknown key") -> M:
    """`read_yaml` then `validate`: the data file at `path` as `model`."""
    return validate(model, read_yaml(path, empty={}), path, where=where, unknown=unknown)


def problems_of(exc: ValidationError, raw: JsonValue = None, *, where: str = "",
                unknown: str = "unknown key") -> list[str]:
    """A pydantic error as "where: what" strings: the location as a dotted path (list items as `[i]`),
    a validator's own sentence as it was written (no "Value error, " prefix), in the file's key order."""
    order = {key: i for i, key in enumerate(raw)} if isinstance(raw, Mapping) else {}
    found: list[tuple[int, str]] = []
    for error in exc.errors(include_url=False):
        loc = _dotted(error["loc"])
        if error["type"] == "value_error":
            what = str(error.get("ctx", {}).get("error", error["msg"]))
        elif error["type"] == "extra_forbidden":
            what = unknown
        else:
            what = error["msg"][:1].lower() + error["msg"][1:]
        text = f"{loc}: {what}" if loc else what
        if where:
            text = f"{where} {text}" if loc else f"{where}: {text}"
        first = error["loc"][0] if error["loc"] else None
        found.append((order.get(first, len(order)), text))
    return [text for _, text in sorted(found, key=lambda item: item[0])]


def _dotted(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# -- field types shared by the data files, each with the sentence an operator reads --------------------

def checked(test: Callable[[object], object], problem: str) -> Callable[[object], object]:
    """A pydantic BeforeValidator: the value as it is when `test` holds (is truthy), else `problem` as the
    listed text."""
    def check(value: object) -> object:
        if not test(value):
            raise ValueError(problem)
        return value
    return check


def _number(value: object) -> TypeGuard[int | float]:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _time_of_day(value: object) -> time:
    if isinstance(value, time):
        return value
    try:
        return time.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a time of day (HH:MM)") from None


# A count such as a cap or a number of attempts (YAML's `true` is not 1).
WholeAtLeast1 = Annotated[int, BeforeValidator(checked(
    lambda v: not isinstance(v, bool) and isinstance(v, int) and v >= 1, "must be a whole number of at least 1"))]
# A span in seconds, integer or not.
Seconds = Annotated[float, BeforeValidator(checked(
    lambda v: _number(v) and v >= 0, "must be a number of seconds, 0 or more"))]
# "HH:MM" (or "HH:MM:SS").
TimeOfDay = Annotated[time, BeforeValidator(_time_of_day)]


class Strict(BaseModel):
    """A data file's part: every key known (a typo is a problem, not a silent default), read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Open(BaseModel):
    """A part that may carry keys for someone else (e.g. a rule's action fields)."""

    model_config = ConfigDict(extra="allow", frozen=True)
