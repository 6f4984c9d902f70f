"""The content calendar (playbook/_calendar.yaml): dated campaigns the engine runs by itself.

Pure: loading, validation and audience selection. The runner fires a due campaign by posting its event
to every matching lead through the same path as bus messages (idempotent by message id, per-lead
locks), and records the campaign as done in SQL.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

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
    properties: Mapping[str, Any] = field(default_factory=dict)
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

    def audience(self, lead: Mapping[str, Any]) -> set[str]:
        """The campaigns whose audience this lead is in."""
        if self.audiences is None:
            return set()
        return {m.rule for m in self.audiences.evaluate({"lead": dict(lead)})}

    def message(self, campaign: Campaign, lead_id: str, lead: Mapping[str, Any]) -> dict[str, Any]:
        return {"id": f"calendar:{campaign.id}:{lead_id}", "lead_id": lead_id, "type": campaign.event,
                "properties": {**campaign.properties, "campaign": campaign.id}, "occurred_at": iso(campaign.at),
                "lead": dict(lead), "source": "calendar"}


def load_calendar(path: Path = CALENDAR_FILE) -> Calendar:
    """Read and validate the calendar, raising DefinitionError listing every problem."""
    if not path.exists():
        return Calendar()
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    items = raw.get("campaigns") or []
    problems: list[str] = []
    if not isinstance(items, list):
        raise DefinitionError([f"{path.name}: campaigns must be a list"])
    campaigns: list[Campaign] = []
    specs: list[RuleSpec] = []
    for i, item in enumerate(items):
        where = f"{path.name} campaigns[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a mapping")
            continue
        cid = str(item.get("id", ""))
        if not CAMPAIGN_ID.fullmatch(cid):
            problems.append(f"{where}: id must be a lower-case word")
        elif any(c.id == cid for c in campaigns):
            problems.append(f"{where}: duplicate id {cid}")
        at = parse_time(item.get("at"))
        if at is None:
            problems.append(f"{where}: at must be an RFC 3339 time")
        if not EVENT.fullmatch(str(item.get("event", ""))):
            problems.append(f"{where}: event must be an event type such as seasonal_window")
        props = item.get("properties") or {}
        if not isinstance(props, dict):
            problems.append(f"{where}: properties must be a mapping")
        audience = item.get("audience")
        problems += [f"{where} audience: {p}" for p in validate_condition(audience)]
        unknown = set(item) - {"id", "at", "event", "properties", "audience", "expires"}
        if unknown:
            problems.append(f"{where}: unknown keys {sorted(unknown)}")
        try:
            expires = parse_duration(item.get("expires", "7d"))
        except (ValueError, TypeError):
            problems.append(f"{where}: expires must be a duration such as 7d")
            expires = timedelta(days=7)
        if not problems and at is not None and isinstance(props, dict):
            campaigns.append(Campaign(cid, at, str(item["event"]), dict(props), expires))
            specs.append(RuleSpec(cid, audience))  # type: ignore[arg-type]
    if problems:
        raise DefinitionError(problems)
    digest = hashlib.sha256(json.dumps([[s.name, s.when] for s in specs], sort_keys=True,
                                       default=str).encode()).hexdigest()[:12]
    return Calendar(tuple(campaigns), compile_rules(f"journeys.calendar.{digest}", specs) if specs else None)
