"""Typed settings, read once per process from `NURTURE_*` environment variables and flags.

A bad value fails fast at start-up with the variable's name, never later in a request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

ClockKind = Literal["real", "virtual"]


class SettingsError(ValueError):
    """A setting is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    """Everything a process of the mesh needs to know about its surroundings."""

    data_dir: Path = Path("data")
    database_url: str | None = None
    redis_url: str = "redis://127.0.0.1:6390/0"
    clock: ClockKind = "real"
    otlp_endpoint: str | None = None
    smtp_url: str = "smtp://127.0.0.1:2525"
    public_url: str = "http://127.0.0.1:8080"
    api_key: str = "dev-key"
    secret: str = "dev-secret-change-me"
    scoring_addr: str = "127.0.0.1:50051"
    journeys_addr: str = "127.0.0.1:50052"
    messaging_addr: str = "127.0.0.1:50053"
    crm_sync_addr: str = "127.0.0.1:50054"
    crm_url: str = "http://127.0.0.1:8090"
    crm_tokens: dict[str, str] = field(default_factory=lambda: {"local-crm": "dev-crm-token"})
    grpc_port: int = 0
    bind_host: str = "127.0.0.1"
    http_port: int = 8080
    bus_shards: int = 8
    timer_shards: int = 16
    max_body_bytes: int = 1_048_576
    max_batch: int = 1000
    rate_limit_per_s: int = 0  # per API key on /v1; 0 = off
    log_level: str = "INFO"

    def sqlite_url(self, service: str) -> str:
        """The embedded default: one SQLite file per service under the data dir."""
        return f"sqlite:///{(self.data_dir / f'{service}.db').resolve()}"

    def database_url_for(self, service: str) -> str:
        return self.database_url or self.sqlite_url(service)

    def address_of(self, service: str) -> str:
        return str(getattr(self, f"{service}_addr"))

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)


SERVICES = ("scoring", "journeys", "messaging", "crm_sync")


def _coerce(name: str, kind: Any, raw: str) -> Any:
    text = str(kind)
    try:
        if "int" in text and "str" not in text:
            return int(raw)
        if "Path" in text:
            return Path(raw)
        if "dict" in text:
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return {str(k): str(v) for k, v in value.items()}
        if name == "clock":
            if raw not in ("real", "virtual"):
                raise ValueError("expected real or virtual")
            return raw
        if "None" in text and raw == "":
            return None
        return raw
    except ValueError as exc:
        raise SettingsError(f"NURTURE_{name.upper()}={raw!r}: {exc}") from exc


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the settings from the environment (`NURTURE_<FIELD>`), then explicit overrides (flags)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(f"NURTURE_{f.name.upper()}")
        if raw is not None:
            values[f.name] = _coerce(f.name, f.type, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    if settings.bus_shards < 1 or settings.timer_shards < 1:
        raise SettingsError("NURTURE_BUS_SHARDS and NURTURE_TIMER_SHARDS must be positive")
    return settings


def to_environ(settings: Settings) -> dict[str, str]:
    """The inverse of load_settings: how `nurture up` hands its settings to child processes."""
    env: dict[str, str] = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        env[f"NURTURE_{f.name.upper()}"] = json.dumps(value) if isinstance(value, dict) else str(value)
    return env
