"""Publishable site keys (`NURTURE_SITE_KEYS`): which origins may use each, and its limits.

A site key is public (it sits in the page's HTML), so it grants only what a visitor's own browser may
do: collect events of the allowed set, identify the visitor, read the visitor's own personalization and
form fields. The origins are the security boundary: a call whose `Origin` is not one of the key's is
refused (and gets no CORS headers, so a browser hides any answer from the page)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nurture.settings import Settings, SettingsError


class _KeyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    origins: list[str] = Field(min_length=1)
    honor_dnt: bool = True
    honor_gpc: bool = True
    rate_per_s: int = Field(default=200, ge=1, le=1_000_000)
    visitor_per_min: int = Field(default=120, ge=1, le=100_000)

    @field_validator("origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        out = []
        for origin in value:
            normal = normal_origin(origin)
            if normal is None or normal != origin.rstrip("/").lower():
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
            out.append(normal)
        return out


@dataclass(frozen=True)
class SiteKey:
    key: str
    origins: frozenset[str]
    honor_dnt: bool
    honor_gpc: bool
    rate_per_s: int
    visitor_per_min: int

    def allows(self, origin: str | None) -> bool:
        if origin is None:
            return False
        # A browser sends the origin in its normal form: the exact match spares parsing it each call.
        return origin in self.origins or normal_origin(origin) in self.origins


def normal_origin(value: str) -> str | None:
    """`scheme://host[:port]` in lower case, the default port dropped; None when it is not one."""
    try:
        parts = urlsplit(value.strip().rstrip("/"))
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.username:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def url_origin(url: str) -> str | None:
    """The origin of a full URL (a click's destination)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return normal_origin(f"{parts.scheme}://{parts.netloc}") if parts.netloc else None


def parse_site_keys(raw: str) -> dict[str, SiteKey]:
    """The keys of `NURTURE_SITE_KEYS`; SettingsError naming every problem (never a key's value)."""
    if not raw.strip():
        return {}
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise SettingsError(f"NURTURE_SITE_KEYS is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise SettingsError('NURTURE_SITE_KEYS must be a JSON object {"<key>": {"origins": [...]}}')
    keys: dict[str, SiteKey] = {}
    problems: list[str] = []
    for n, (key, config) in enumerate(document.items()):
        if not 16 <= len(key) <= 128 or not key.isascii() or not key.replace("-", "").replace("_", "").isalnum():
            problems.append(f"key #{n + 1}: a site key is 16-128 letters, digits, - or _")
            continue
        try:
            c = _KeyConfig.model_validate(config)
        except ValidationError as exc:
            problems += [f"key #{n + 1} {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            continue
        keys[key] = SiteKey(key, frozenset(c.origins), c.honor_dnt, c.honor_gpc, c.rate_per_s, c.visitor_per_min)
    if problems:
        raise SettingsError("NURTURE_SITE_KEYS: " + "; ".join(problems))
    return keys


def site_keys(settings: Settings) -> dict[str, SiteKey]:
    return parse_site_keys(settings.site_keys)


def all_origins(keys: dict[str, SiteKey]) -> frozenset[str]:
    return frozenset(o for k in keys.values() for o in k.origins)
