"""Typed settings, read once per process from `NURTURE_*` environment variables and flags.

A bad value fails fast at start-up with the variable's name, never later in a request.

Secrets (`secret`, `api_key`, `crm_tokens`, `mesh_token`) have no usable default: the source is public,
so a default would be a key everyone holds. A process bound beyond loopback (`NURTURE_BIND_HOST`) refuses
to start while any of them is missing or one of the values this project once shipped as defaults
(`insecure_secrets`); on loopback a missing secret fails closed where it is used (nothing verifies).
`nurture up` generates them on first start (nurture.secretstore). docs/SECURITY.md says what each guards.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from nurture.addresses import AddressError, grpc_target

ClockKind = Literal["real", "virtual"]


class SettingsError(ValueError):
    """A setting is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    """Everything a process of the mesh needs to know about its surroundings."""

    data_dir: Path = Path("data")
    database_url: str | None = None
    redis_url: str = "redis://127.0.0.1:6390/0"
    # True: `redis_url` names one node of a Redis Cluster (database 0 only); nurture.redisconn then hands
    # out cluster clients, which find the other nodes and follow slots as they move.
    redis_cluster: bool = False
    # Replicas that must hold a bus entry before scoring lets go of it (WAIT; nurture.bus.Publisher): 0 with
    # no replicas; `nurture up --redis-cluster-replicas R` sets 1, so a master's failover loses no event.
    redis_wait_replicas: int = 0
    clock: ClockKind = "real"
    otlp_endpoint: str | None = None
    # The share of traces recorded, decided where a trace starts (the gateway, for a request) and
    # followed by every hop after it (nurture.telemetry): 0.1 records one event's trace in ten, whole.
    trace_sample_ratio: float = 1.0
    smtp_url: str = "smtp://127.0.0.1:2525"
    public_url: str = "http://127.0.0.1:8080"
    api_key: str = ""  # the operator's key: role admin (docs/SECURITY.md, "Roles")
    # More API keys, each with its role: JSON object key → "viewer" | "editor" | "admin"
    api_keys: dict[str, str] = field(default_factory=dict)
    session_secret: str = ""  # HMAC key of the console's session cookies; "" = console sign-in refused
    secret: str = ""  # HMAC key of tracking/unsubscribe link tokens
    secret_previous: str = ""  # still verifies links signed before a rotation; new links use `secret`
    mesh_token: str = ""  # the key services sign their gRPC calls to each other with (nurture.meshauth)
    mesh_token_previous: str = ""  # still accepted from callers during a rotation
    scoring_addr: str = "127.0.0.1:50051"
    journeys_addr: str = "127.0.0.1:50052"
    messaging_addr: str = "127.0.0.1:50053"
    crm_sync_addr: str = "127.0.0.1:50054"
    analytics_addr: str = "127.0.0.1:50055"
    crm_url: str = "http://127.0.0.1:8090"
    crm_tokens: dict[str, str] = field(default_factory=dict)
    ads_url: str = ""  # the ad platform's custom-audience API (nurture up: a local emulator); "" = not synced
    ads_token: str = ""  # the access token it expects
    # DKIM (services/messaging/domain/dkim.py): {"<domain>:<selector>": "<PEM path>"}; nurture up makes a
    # development key when none is set. During a rotation a domain has two keys and `dkim_selectors`
    # ({"<domain>": "<selector>"}) names the one that signs; both stay published.
    dkim_keys: dict[str, str] = field(default_factory=dict)
    dkim_selectors: dict[str, str] = field(default_factory=dict)
    dkim_domain: str = ""  # the domain that signs mail from a domain without its own key
    bounce_domain: str = ""  # VERP return paths bounces+<token>@<this>; "" = the DKIM domain or the sender's
    bounce_smtp_addr: str = "127.0.0.1:2526"  # messaging's bounce receiver (its MX); port 0 = any free port
    # The port this process serves gRPC on; 0: its own address setting's. Required when that setting lists
    # several replicas (which one is this?): `nurture up --replicas` sets it per replica.
    grpc_port: int = 0
    bind_host: str = "127.0.0.1"
    http_port: int = 8080
    bus_shards: int = 8
    timer_shards: int = 16
    max_body_bytes: int = 1_048_576
    max_batch: int = 1000
    # Ingest transactions scoring runs at once, and IngestEvents calls of single posts the gateway keeps
    # in flight to it, on PostgreSQL (`ingest_in_flight`; SQLite has one writer: one).
    ingest_writers: int = 2
    # The gateway starts its IngestEvents calls of single posts at least this far apart: under load each
    # carries more posts (a call's cost is mostly fixed), a post waits at most this long more (gateway.ingest).
    ingest_call_interval_ms: float = 5.0
    rate_limit_per_s: int = 0  # per API key on /v1; 0 = off
    # Publishable keys of the website tracking snippet, JSON {"<key>": {"origins": [...], ...}}
    # (gateway.tracking.keys reads and checks it; docs/API.md "Website tracking")
    site_keys: str = ""
    log_level: str = "INFO"
    # on_start: every process brings its service's schema to head when it starts (the embedded default;
    # replicas on PostgreSQL take turns under an advisory lock). check: a deployment runs `nurture migrate`
    # once, and a process whose schema is not its code's newest refuses to start.
    migrate: str = "on_start"
    # This process's name among its service's replicas (`nurture up --replicas`: 0, 1, ...). Queued work a
    # process claims carries it, so a restarted replica takes its own claims back at once and leaves a
    # live replica's alone (those return to the queue only when their lease runs out). Empty: this host's
    # name (a container's, where every replica of a scaled service gets the same environment).
    replica: str = "0"
    # Journeys and analytics replicas own partitions of the leads through leases in Redis
    # (nurture.partitions): a dead or paused replica's partitions pass to the others after this long.
    partition_lease_ms: int = 10_000

    def sqlite_url(self, service: str) -> str:
        """The embedded default: one SQLite file per service under the data dir."""
        return f"sqlite:///{(self.data_dir / f'{service}.db').resolve()}"

    def database_url_for(self, service: str) -> str:
        return self.database_url or self.sqlite_url(service)

    @property
    def ingest_in_flight(self) -> int:
        """`ingest_writers` on PostgreSQL, 1 on SQLite (the embedded default)."""
        url = self.database_url or ""
        return 1 if not url or url.startswith("sqlite") else max(1, self.ingest_writers)

    def address_of(self, service: str) -> str:
        return str(getattr(self, f"{service}_addr"))

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def mesh_tokens(self) -> tuple[str, ...]:
        """The mesh keys a server accepts: the current one, then the previous one during a rotation."""
        return tuple(t for t in (self.mesh_token, self.mesh_token_previous) if t)

    def insecure_secrets(self) -> list[str]:
        """The variables whose value is missing or publicly known (empty when all are set)."""
        bad = [f"NURTURE_{name.upper()}" for name in SECRET_FIELDS if _weak(getattr(self, name))]
        if not self.crm_tokens or any(_weak(token) for token in self.crm_tokens.values()):
            bad.append("NURTURE_CRM_TOKENS")
        if any(_weak(key) for key in self.api_keys):
            bad.append("NURTURE_API_KEYS")
        # Optional (without it the console refuses sign-in), but a public value would let anyone forge one.
        if self.session_secret and _weak(self.session_secret):
            bad.append("NURTURE_SESSION_SECRET")
        # Optional too, but still accepted while set: a rotation away from a once-shipped default that kept
        # it as the previous key would let anyone sign mesh calls, or forge any lead's unsubscribe and
        # click links, for as long as the rotation lasts.
        for name in ("secret_previous", "mesh_token_previous"):
            value = getattr(self, name)
            if value and _weak(value):
                bad.append(f"NURTURE_{name.upper()}")
        return bad


SERVICES = ("scoring", "journeys", "messaging", "crm_sync", "analytics")
ROLES = ("viewer", "editor", "admin")  # each can do what the one before it can, and more
SECRET_FIELDS = ("secret", "api_key", "mesh_token")
# Values that were defaults in the source at some point, or are placeholders: as public as no secret.
KNOWN_DEFAULTS = frozenset({"dev-secret-change-me", "dev-key", "dev-crm-token", "change-me", "changeme", "secret"})
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


def _weak(value: str) -> bool:
    return not value.strip() or value.strip().lower() in KNOWN_DEFAULTS


def is_loopback(host: str) -> bool:
    """Whether a bind host is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_secrets(settings: Settings) -> None:
    """Refuse settings that would expose a process beyond this machine with a missing or public secret."""
    if is_loopback(settings.bind_host):
        return
    bad = settings.insecure_secrets()
    if bad:
        raise SettingsError(
            f"refusing to listen on {settings.bind_host} (not loopback) with missing or publicly known secrets: "
            f"{', '.join(bad)}. Set each to a long random value (e.g. `python -c 'import secrets; "
            f"print(secrets.token_urlsafe(32))'`; NURTURE_CRM_TOKENS is a JSON object CRM name → token), "
            "or bind to 127.0.0.1. See docs/SECURITY.md.")


def _coerce(name: str, kind: Any, raw: str) -> Any:
    text = str(kind)
    try:
        if text == "bool":
            return _flag(raw)
        if "int" in text and "str" not in text:
            return int(raw)
        if text == "float":
            return float(raw)
        if "Path" in text:
            return Path(raw)
        if "dict" in text:
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return {str(k): str(v) for k, v in value.items()}
        if name == "migrate" and raw not in ("on_start", "check"):
            raise ValueError("expected on_start or check")
        if name == "clock":
            if raw not in ("real", "virtual"):
                raise ValueError("expected real or virtual")
            return raw
        if "None" in text and raw == "":
            return None
        return raw
    except ValueError as exc:
        raise SettingsError(f"NURTURE_{name.upper()}={raw!r}: {exc}") from exc


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1 or 0 (true or false)")


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
    if not settings.replica.strip():
        settings = replace(settings, replica=socket.gethostname())
    if not 0.0 <= settings.trace_sample_ratio <= 1.0:  # NaN fails this too
        raise SettingsError(f"NURTURE_TRACE_SAMPLE_RATIO={settings.trace_sample_ratio!r}: expected a share of "
                            "traces from 0 (none) to 1 (every one)")
    if settings.bus_shards < 1 or settings.timer_shards < 1:
        raise SettingsError("NURTURE_BUS_SHARDS and NURTURE_TIMER_SHARDS must be positive")
    if settings.partition_lease_ms < 300:
        raise SettingsError("NURTURE_PARTITION_LEASE_MS must be at least 300 (a lease is renewed every third of it)")
    if settings.redis_cluster and urlparse(settings.redis_url).path.strip("/") not in ("", "0"):
        raise SettingsError(f"NURTURE_REDIS_URL: a Redis Cluster has database 0 only, not "
                            f"{urlparse(settings.redis_url).path.strip('/')!r} (NURTURE_REDIS_CLUSTER=1)")
    for service in SERVICES:  # a malformed list of replicas fails here, not at a service's first call
        try:
            grpc_target(settings.address_of(service))
        except AddressError as exc:
            raise SettingsError(f"NURTURE_{service.upper()}_ADDR: {exc}") from None
    wrong = sorted({role for role in settings.api_keys.values() if role not in ROLES})
    if wrong:  # a typo must not silently grant or deny: name the role, never the key
        raise SettingsError(f"NURTURE_API_KEYS: unknown role(s) {', '.join(map(repr, wrong))}; "
                            f"each key's role is one of {', '.join(ROLES)}")
    check_secrets(settings)
    return settings


def to_environ(settings: Settings) -> dict[str, str]:
    """The inverse of load_settings: how `nurture up` hands its settings to child processes."""
    env: dict[str, str] = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        if isinstance(value, bool):
            env[f"NURTURE_{f.name.upper()}"] = "1" if value else "0"
            continue
        env[f"NURTURE_{f.name.upper()}"] = json.dumps(value) if isinstance(value, dict) else str(value)
    return env
