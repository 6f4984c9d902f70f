"""Delivery policy: send windows in the lead's time zone, frequency caps, retry backoff. Pure functions.

Nurture mail goes out only in the lead's daytime (deferred to the next window, never dropped), under
a rolling per-day and per-week cap, and at least `min_gap_s` after the lead's previous nurture email
(two journeys falling due together, e.g. a segment's re-engagement email and the re-engagement
sequence's first on day 14, arrive hours apart, not in the same minute); transactional mail (webinar
reminders, deliveries) is exempt from all three because its timing is the point of it; a nurture send
whose journey step is `budget: exempt` (SendRequest.budget_exempt: a cart reminder timed to the hour) is
exempt from the caps and the gap, not the window, and still counts in them. The values
are data: `policy.yaml` beside this module, read at start-up (`load_policy`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import model_validator

from nurture.datafiles import DataFileError, Seconds, Strict, TimeOfDay, WholeAtLeast1, read_yaml, validate


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


class PolicyFile(Strict):
    """policy.yaml: each key one of Policy's fields; what the file leaves out keeps its default."""

    window_start: TimeOfDay = DEFAULT_POLICY.window_start
    window_end: TimeOfDay = DEFAULT_POLICY.window_end
    cap_per_day: WholeAtLeast1 = DEFAULT_POLICY.cap_per_day
    cap_per_week: WholeAtLeast1 = DEFAULT_POLICY.cap_per_week
    min_gap_s: Seconds = DEFAULT_POLICY.min_gap_s
    max_attempts: WholeAtLeast1 = DEFAULT_POLICY.max_attempts
    backoff_base_s: Seconds = DEFAULT_POLICY.backoff_base_s
    backoff_max_s: Seconds = DEFAULT_POLICY.backoff_max_s

    @model_validator(mode="after")
    def _consistent(self) -> PolicyFile:
        problems = []
        if self.window_start >= self.window_end:
            problems.append("window_start must be before window_end")
        if self.cap_per_week < self.cap_per_day:
            problems.append("cap_per_week must be at least cap_per_day")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def load_policy(path: Path = POLICY_FILE) -> Policy:
    """The delivery policy from its YAML file (keys as Policy's fields; times as "HH:MM"); a
    DataFileError naming the file and listing every problem when it cannot be used."""
    raw = read_yaml(path, empty={})
    if not isinstance(raw, dict):
        raise DataFileError(["must be a mapping of policy settings"], path)
    known = ", ".join(f.name for f in fields(Policy))
    checked = validate(PolicyFile, raw, path, unknown=f"not a policy setting (known: {known})")
    return Policy(**checked.model_dump())


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
