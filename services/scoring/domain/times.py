"""How scoring reads and shows its times: a stored time may come back naive (SQLite keeps no zone;
every stored time is UTC), and a time is shown as ISO 8601 with `Z`."""

from __future__ import annotations

from datetime import UTC, datetime


def aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def iso(value: datetime | None) -> str | None:
    value = aware(value)
    return value.isoformat().replace("+00:00", "Z") if value else None
