"""A segment's copy as data: its name in emails (`segment_label`), the paragraph after the greeting
(`intro`, Jinja2 with the lead's variables) and what the website recommends to its leads when no journey
of the catalog places them. A segment is added as data (the scoring model and journeys, through the API):
its copy is too, versioned as templates are (app/segments.py), seeded from the catalog's `segments:`.

Pure: the shape and its problems, and the compiled form the renderer reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import Field, ValidationError, field_validator

from nurture.datafiles import Strict
from services.messaging.domain.content import MAX_CTA_LABEL, MAX_TEXT, check_text_source, text_env

# The catalog's "" entry: the copy of a lead whose segment has none of its own (and of a lead without one).
DEFAULT = "_default"
# A segment's name as the path of its copy (PUT /v1/templates/segments/{segment}): scoring stores at most
# 64 characters; a name with other characters than these gets the default copy.
SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_LABEL = 60
MAX_RECOMMENDED = 3   # the website shows three recommendations


def _one_line(value: str) -> str:
    if value != value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must be one line of text without leading or trailing spaces")
    return value


class RecommendationInput(Strict):
    title: str = Field(min_length=1, max_length=MAX_CTA_LABEL)
    path: str = Field(min_length=1, max_length=400)   # a page of the site (the library checks it)

    @field_validator("title")
    @classmethod
    def _title(cls, value: str) -> str:
        return _one_line(value)


class CopyInput(Strict):
    """What a draft holds (the body of PUT /v1/templates/segments/{segment})."""

    label: str = Field(min_length=1, max_length=MAX_LABEL)
    intro: str = Field("", max_length=MAX_TEXT)
    recommended_content: list[RecommendationInput] = Field(default_factory=list, max_length=MAX_RECOMMENDED)

    @field_validator("label")
    @classmethod
    def _label(cls, value: str) -> str:
        return _one_line(value)


@dataclass(frozen=True)
class Recommendation:
    title: str
    path: str


@dataclass(frozen=True)
class SegmentCopy:
    label: str
    intro: str = ""
    recommended: tuple[Recommendation, ...] = ()

    def recommended_dicts(self) -> list[dict[str, str]]:
        return [{"title": r.title, "path": r.path} for r in self.recommended]


def parse(raw: object) -> tuple[SegmentCopy | None, list[str]]:
    """A SegmentCopy from a JSON-like object, or the shape problems (each field's); then the intro's
    Jinja2 (syntax, unknown variables)."""
    problems: list[str] = []
    intro = raw.get("intro") if isinstance(raw, dict) else None
    if isinstance(intro, str):   # its Jinja2 is listed beside the other fields' problems
        check_text_source("intro", intro, problems)
    try:
        data = CopyInput.model_validate(raw)
    except ValidationError as exc:
        return None, [f"{'.'.join(str(p) for p in e['loc']) or 'copy'}: {e['msg']}" for e in exc.errors()] + problems
    copy = SegmentCopy(label=data.label, intro=data.intro,
                       recommended=tuple(Recommendation(r.title, r.path) for r in data.recommended_content))
    return copy, problems


_TEXT = text_env()


class CompiledCopy:
    """A version of a segment's copy ready to render (the intro compiled once)."""

    def __init__(self, segment: str, version: int, copy: SegmentCopy) -> None:
        self.segment = segment
        self.version = version
        self.copy = copy
        self.label = copy.label
        self.intro: Any = _TEXT.from_string(copy.intro) if copy.intro.strip() else None
