"""What the tracking endpoints accept, as data (`data/collect.yaml`, `data/bots.txt`): the allowed event
types with their properties, and who is not a visitor (bots by User-Agent, prefetches by header), and
the privacy signals a site key honours (Do-Not-Track, Global Privacy Control)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from pathlib import Path
from typing import TypeAlias

from pydantic import Field

from gateway.tracking.keys import SiteKey
from nurture import datafiles
from nurture.jsontypes import JsonValue

DATA = Path(__file__).with_name("data")
EVENT_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class CollectPolicy(datafiles.Strict):
    max_events_per_request: int = Field(ge=1, le=1000)
    max_string: int = Field(ge=16, le=65_536)
    events: dict[str, list[str]]


@cache
def collect_policy(path: Path = DATA / "collect.yaml") -> CollectPolicy:
    return datafiles.load(CollectPolicy, path)


@cache
def bot_fragments(path: Path = DATA / "bots.txt") -> tuple[str, ...]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(line.strip().lower() for line in lines if line.strip() and not line.lstrip().startswith("#"))


def not_a_visitor(headers: Mapping[str, str]) -> str:
    """Why this request is no visitor's ("bot", "prefetch"), or ""."""
    purpose = (headers.get("purpose", "") + " " + headers.get("sec-purpose", "") + " "
               + headers.get("x-purpose", "") + " " + headers.get("x-moz", "")).lower()
    if "prefetch" in purpose or "prerender" in purpose or "preview" in purpose:
        return "prefetch"
    return "bot" if is_bot(headers.get("user-agent", "")) else ""


@lru_cache(maxsize=4096)
def is_bot(agent: str) -> bool:
    """Whether a User-Agent is on the bot list (or empty). Cached: a site's visitors send a few
    thousand distinct agents, and each check is some 30 substring searches."""
    lowered = agent.lower()
    return not lowered or any(fragment in lowered for fragment in bot_fragments())


def privacy_refusal(key: SiteKey, headers: Mapping[str, str]) -> str:
    """"do_not_track" or "global_privacy_control" when the visitor asked not to be tracked and the key
    honours it, else ""."""
    if key.honor_gpc and headers.get("sec-gpc", "").strip() == "1":
        return "global_privacy_control"
    if key.honor_dnt and headers.get("dnt", "").strip() == "1":
        return "do_not_track"
    return ""


# A collected property's value: the snippet sends no nested JSON.
Scalar: TypeAlias = str | int | float | bool | None


@dataclass(frozen=True)
class CollectedEvent:
    client_id: str
    type: str
    properties: dict[str, Scalar]   # only the names collect.yaml allows for its type
    occurred_at: datetime | None


def check_event(raw: JsonValue) -> tuple[CollectedEvent | None, str]:
    """One event of a collect body: (the event, "") or (None, why it is refused). The time is the
    service's on arrival: the snippet sends at once, and a browser's clock must not move history."""
    policy = collect_policy()
    if not isinstance(raw, dict):
        return None, "must be an object {id, type, properties}"
    unknown = set(raw) - {"id", "type", "properties"}
    if unknown:
        return None, f"unknown field(s): {', '.join(sorted(map(str, unknown)))[:200]}"
    client_id, etype, props = raw.get("id"), raw.get("type"), raw.get("properties", {})
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= 64 or not set(client_id) <= EVENT_ID_CHARS:
        return None, "id must be 1-64 letters, digits, _ or - (the snippet's id of this event)"
    if not isinstance(etype, str) or etype not in policy.events:
        return None, f"type must be one of {', '.join(policy.events)}"
    if not isinstance(props, dict):
        return None, "properties must be an object"
    allowed = policy.events[etype]
    extra = sorted(str(k) for k in props if k not in allowed)
    if extra:
        return None, f"{etype} takes only {', '.join(allowed)} (not {', '.join(extra)[:200]})"
    clean: dict[str, Scalar] = {}
    for name, value in props.items():
        if isinstance(value, str):
            clean[name] = value[:policy.max_string]
        elif isinstance(value, bool) or value is None or isinstance(value, int | float) and abs(value) <= 2**53 - 1:
            clean[name] = value
        else:
            return None, f"properties.{name} must be a string, number, true, false or null"
    return CollectedEvent(client_id, etype, clean, None), ""
