"""Progressive profiling, pure: which fields a form should ask next (what is not known yet, in the
priority order of `data/profiling.yaml`), and whether answers to them are valid. No SQL here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from nurture import datafiles
from nurture.jsontypes import JsonMapping, JsonObject, JsonValue
from services.scoring.domain.addresses import check_email
from services.scoring.domain.validation import MAX_LENGTHS

PROFILING_FILE = Path(__file__).parents[1] / "data" / "profiling.yaml"
LEAD_FIELDS = ("email", "first_name", "last_name")
MAX_TEXT = 200


class FieldSpec(datafiles.Strict):
    key: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    label: str
    kind: Literal["email", "text", "choice", "multi_choice", "number", "boolean"]
    choices: list[str] = []
    min: float | None = None
    max: float | None = None


class Profiling(datafiles.Strict):
    ask_at_most: int = Field(ge=1, le=20)
    fields: list[FieldSpec]

    def spec(self, key: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.key == key), None)


def load_profiling(path: Path = PROFILING_FILE) -> Profiling:
    profiling = datafiles.load(Profiling, path)
    problems = [f"fields.{i}: {f.kind} needs choices" for i, f in enumerate(profiling.fields)
                if f.kind in ("choice", "multi_choice") and not f.choices]
    keys = [f.key for f in profiling.fields]
    problems += [f"fields: {k} is listed twice" for k in sorted({k for k in keys if keys.count(k) > 1})]
    if problems:
        raise datafiles.DataFileError(problems, path)
    return profiling


def known(profile: JsonMapping, key: str) -> bool:
    """Whether the person has answered this (a lead field or an attribute; an empty value is unknown)."""
    value = profile.get(key) if key in LEAD_FIELDS else (profile.get("attributes") or {}).get(key)
    return value not in (None, "", [], {})


def next_fields(profiling: Profiling, profile: JsonMapping, limit: int = 0) -> list[FieldSpec]:
    """The fields to ask now: the first ones not known, in priority order, at most `limit` (or the
    file's `ask_at_most`)."""
    wanted = min(limit, 20) if limit > 0 else profiling.ask_at_most
    return [f for f in profiling.fields if not known(profile, f.key)][:wanted]


def check_answers(profiling: Profiling, answers: JsonValue) -> tuple[JsonObject, dict[str, str]]:
    """(the answers as stored, every problem by field). Only fields of the file are accepted."""
    if not isinstance(answers, dict) or not answers:
        return {}, {"answers": "must be an object of field: value with at least one field"}
    clean: JsonObject = {}
    problems: dict[str, str] = {}
    for key, value in answers.items():
        spec = profiling.spec(str(key))
        if spec is None:
            problems[str(key)[:64]] = "is not a field of this form"
            continue
        problem, stored = _check(spec, value)
        if problem:
            problems[key] = problem
        else:
            clean[key] = stored
    return clean, problems


def _check(spec: FieldSpec, value: JsonValue) -> tuple[str, JsonValue]:
    if spec.kind == "email":
        value = value.strip() if isinstance(value, str) else value
        if not isinstance(value, str) or len(value) > MAX_LENGTHS["email"]:
            return "is not an email address", None
        normalised, why = check_email(value)  # the same check as a lead's email (email-validator)
        return (f"is not an email address: {why}", None) if why else ("", normalised)
    if spec.kind == "text":
        if not isinstance(value, str) or not value.strip():
            return "must be a non-empty string", None
        limit = MAX_LENGTHS.get(spec.key, MAX_TEXT)
        if len(value) > limit:
            return f"must be at most {limit} characters", None
        return "", value.strip()
    if spec.kind == "choice":
        if value not in spec.choices:
            return f"must be one of {', '.join(spec.choices)}", None
        return "", value
    if spec.kind == "multi_choice":
        if not isinstance(value, list) or not value or any(v not in spec.choices for v in value):
            return f"must be a non-empty list of {', '.join(spec.choices)}", None
        return "", list(dict.fromkeys(value))
    if spec.kind == "boolean":
        if not isinstance(value, bool):
            return "must be true or false", None
        return "", value
    # number
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return "must be a number", None
    if spec.min is not None and value < spec.min:
        return f"must be at least {spec.min:g}", None
    if spec.max is not None and value > spec.max:
        return f"must be at most {spec.max:g}", None
    return "", value
