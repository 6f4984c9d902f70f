"""The content calendar (playbook/_calendar.yaml): dated campaigns the engine runs by itself.

Pure: loading, validation and audience selection. The runner fires a due campaign by posting its event
to every matching lead through the same path as bus messages (idempotent by message id, per-lead
locks), and records the campaign as done in SQL.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field, model_validator

from nurture.busmessage import BusMessage
from nurture.datafiles import DataFileError, Strict, checked, read_yaml, validate
from nurture.jsontypes import JsonMapping, JsonObject, JsonValue
from nurture.rules import CompiledRules, RuleSpec, compile_rules, validate_condition
from services.journeys.domain.definitions import PLAYBOOK_DIR, DefinitionError, parse_duration
from services.journeys.domain.state import iso, parse_time

CALENDAR_FILE = PLAYBOOK_DIR / "_calendar.yaml"
CAMPAIGN_ID = re.compile(r"[a-z][a-z0-9_]{0,99}")
EVENT = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True)
class Campaign:
    id: str
    at: datetime
    event: str
    properties: JsonMapping = field(default_factory=dict)
    expires: timedelta = timedelta(days=7)


@dataclass(frozen=True)
class Calendar:
    campaigns: tuple[Campaign, ...] = ()
    audiences: CompiledRules | None = None

    def due(self, now: datetime, done: set[str]) -> list[Campaign]:
        return [c for c in self.campaigns if c.at <= now and c.id not in done]

    def next_at(self, done: set[str]) -> datetime | None:
        pending = [c.at for c in self.campaigns if c.id not in done]
        return min(pending) if pending else None

    def audience(self, lead: JsonMapping) -> set[str]:
        """The campaigns whose audience this lead is in."""
        if self.audiences is None:
            return set()
        return {m.rule for m in self.audiences.evaluate({"lead": dict(lead)})}

    def message(self, campaign: Campaign, lead_id: str) -> BusMessage:
        """The campaign's event for one lead, handled as a bus message. It carries no snapshot: the
        lead is as journeys holds it."""
        return BusMessage(id=f"calendar:{campaign.id}:{lead_id}", lead_id=lead_id, type=campaign.event,
                          properties={**campaign.properties, "campaign": campaign.id}, occurred_at=iso(campaign.at),
                          source="calendar")


def _at(value: JsonValue) -> datetime:
    at = parse_time(value)
    if at is None:
        raise ValueError("must be an RFC 3339 time")
    return at


def _expires(value: JsonValue) -> timedelta:
    try:
        return parse_duration(value)
    except (ValueError, TypeError):
        raise ValueError("must be a duration such as 7d") from None


def _audience(value: JsonValue) -> JsonValue:
    problems = validate_condition(value)
    if problems:
        raise ValueError("; ".join(problems))
    return value


class CampaignEntry(Strict):
    id: Annotated[str, BeforeValidator(checked(lambda v: isinstance(v, str) and CAMPAIGN_ID.fullmatch(v),
                                                "must be a lower-case word"))]
    at: Annotated[datetime, BeforeValidator(_at)]
    event: Annotated[str, BeforeValidator(checked(lambda v: isinstance(v, str) and EVENT.fullmatch(v),
                                                   "must be an event type such as seasonal_window"))]
    properties: JsonObject = Field(default_factory=dict)
    audience: Annotated[JsonObject, BeforeValidator(_audience)]
    expires: Annotated[timedelta, BeforeValidator(_expires)] = timedelta(days=7)


class CalendarFile(Strict):
    campaigns: list[CampaignEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> CalendarFile:
        seen: set[str] = set()
        for c in self.campaigns:
            if c.id in seen:
                raise ValueError(f"duplicate campaign id {c.id}")
            seen.add(c.id)
        return self


def load_calendar(path: Path = CALENDAR_FILE) -> Calendar:
    """Read and validate the calendar, raising DefinitionError listing every problem."""
    raw = read_yaml(path, missing=None, empty={})
    if raw is None:
        return Calendar()
    try:
        checked = validate(CalendarFile, raw, where=path.name)
    except DataFileError as exc:
        raise DefinitionError(exc.problems) from None
    campaigns = [Campaign(c.id, c.at, c.event, dict(c.properties), c.expires) for c in checked.campaigns]
    specs = [RuleSpec(c.id, c.audience) for c in checked.campaigns]
    digest = hashlib.sha256(json.dumps([[s.name, s.when] for s in specs], sort_keys=True,
                                       default=str).encode()).hexdigest()[:12]
    return Calendar(tuple(campaigns), compile_rules(f"journeys.calendar.{digest}", specs) if specs else None)
