"""Delivery policy: send windows in the lead's time zone, frequency caps, retry backoff. Pure functions.

Nurture mail goes out only in the lead's daytime (deferred to the next window, never dropped), under
a rolling per-day and per-week cap, and at least `min_gap_s` after the lead's previous nurture email
(two journeys falling due together, e.g. a segment's re-engagement email and the re-engagement
sequence's first on day 14, arrive hours apart, not in the same minute); transactional mail (webinar
reminders, deliveries) is exempt from all three because its timing is the point of it. The values
are data: `policy.yaml` beside this module, read at start-up (`load_policy`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml


@dataclass(frozen=True)
class Policy:
    window_start: time = time(8, 0)
    window_end: time = time(20, 0)
    cap_per_day: int = 3
    cap_per_week: int = 10
    min_gap_s: float = 2 * 3600.0
    max_attempts: int = 8
    backoff_base_s: float = 30.0
    backoff_max_s: float = 3600.0


DEFAULT_POLICY = Policy()
POLICY_FILE = Path(__file__).parents[1] / "data" / "policy.yaml"


class PolicyError(ValueError):
    """A policy file that cannot be used; the message lists every problem."""


def load_policy(path: Path = POLICY_FILE) -> Policy:
    """The delivery policy from its YAML file (keys as Policy's fields; times as "HH:MM")."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"{path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise PolicyError(f"{path}: must be a mapping of policy settings")
    known = {f.name: f for f in fields(Policy)}
    problems = [f"{key}: not a policy setting (known: {', '.join(known)})" for key in raw if key not in known]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            continue
        if key in ("window_start", "window_end"):
            try:
                values[key] = time.fromisoformat(str(value))
            except ValueError:
                problems.append(f"{key}: {value!r} is not a time of day (HH:MM)")
        elif key in ("cap_per_day", "cap_per_week", "max_attempts"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{key}: must be a whole number of at least 1")
            else:
                values[key] = value
        elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            problems.append(f"{key}: must be a number of seconds, 0 or more")
        else:
            values[key] = float(value)
    policy = replace(DEFAULT_POLICY, **values)
    if policy.window_start >= policy.window_end:
        problems.append("window_start must be before window_end")
    if policy.cap_per_week < policy.cap_per_day:
        problems.append("cap_per_week must be at least cap_per_day")
    if problems:
        raise PolicyError(f"{path}: " + "; ".join(problems))
    return policy


def zone_of(name: str | None) -> ZoneInfo:
    """The lead's zone; an unknown or empty name falls back to UTC rather than failing the send."""
    try:
        return ZoneInfo(name) if name else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def next_window(now: datetime, tz_name: str | None, policy: Policy = DEFAULT_POLICY) -> datetime | None:
    """None when `now` is inside the lead's daytime window, else the (UTC) start of the next window."""
    zone = zone_of(tz_name)
    local = now.astimezone(zone)
    if policy.window_start <= local.time() < policy.window_end:
        return None
    day = local.date() if local.time() < policy.window_start else local.date() + timedelta(days=1)
    start = datetime.combine(day, policy.window_start, tzinfo=zone)
    return start.astimezone(now.tzinfo)


def backoff(attempts: int, policy: Policy = DEFAULT_POLICY) -> timedelta:
    """Exponential backoff after `attempts` failed tries: 30 s, 60 s, 120 s ... capped at an hour."""
    return timedelta(seconds=min(policy.backoff_max_s, policy.backoff_base_s * 2 ** max(0, attempts - 1)))
