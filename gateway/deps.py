"""What every router module uses: the mesh's gRPC channels, API-key auth, and the error type.

gRPC errors raised by a handler are turned into the API's error shape by the app (see app.py):
UNAVAILABLE/DEADLINE_EXCEEDED/CANCELLED → 503 with Retry-After, INVALID_ARGUMENT → 422, NOT_FOUND → 404,
ALREADY_EXISTS/FAILED_PRECONDITION/ABORTED → 409, RESOURCE_EXHAUSTED → 429, PERMISSION_DENIED → 403.
A service may put a JSON object `{"code", "message", "details"}` in the status details string to
choose the error's code and details (e.g. every validation problem of a journey definition).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from fastapi import Request
from starlette.requests import ClientDisconnect

from gateway import roles
from nurture import limits
from nurture.errors import NurtureError
from nurture.jsontypes import JsonObject, JsonValue
from nurture.rpc import DEADLINE_S
from nurture.settings import Settings

StubT = TypeVar("StubT")


class ApiError(NurtureError):
    """A refusal the gateway answers itself, with its own HTTP status and headers (the shape, and the
    gRPC side of the hierarchy: nurture.errors)."""

    def __init__(self, status: int, code: str, message: str, details: JsonObject | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=code, details=details)
        self.status = self.http_status = status
        self.headers = headers or {}


@dataclass
class Mesh:
    """One gRPC channel per service, opened once for the gateway's lifetime."""

    settings: Settings
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    timeout: float = DEADLINE_S
    # Stubs made once per channel: a stub builds a callable for every method of its service (messaging
    # has about twenty), and one made per single event post was a fifth of the gateway's CPU per post.
    stubs: dict[tuple[Callable[[grpc.aio.Channel], object], str], tuple[grpc.aio.Channel, object]] = field(
        default_factory=dict)

    # Names a report's filters are checked against (gateway.known): kind → (when read, monotonic; names).
    known: dict[str, tuple[float, frozenset[str]]] = field(default_factory=dict)

    def channel(self, service: str) -> grpc.aio.Channel:
        return self.channels[service]

    def stub(self, make: Callable[[grpc.aio.Channel], StubT], service: str) -> StubT:
        """`make(channel)` for the service's channel, made on first use and kept while that channel is
        the service's (an app started again opens new channels)."""
        key, ch = (make, service), self.channel(service)
        found = self.stubs.get(key)
        if found is None or found[0] is not ch:
            found = self.stubs[key] = (ch, make(ch))
        return found[1]  # type: ignore[return-value]  # stored under its own factory: that factory's type


async def mesh(request: Request) -> Mesh:
    """FastAPI dependency: the app's Mesh."""
    value: Mesh = request.app.state.mesh
    return value


async def require_key(request: Request) -> None:
    """FastAPI dependency: `Authorization: Bearer <api key>` or 401; a key whose role may not do this
    request (gateway.roles) gets 403."""
    settings: Settings = request.app.state.mesh.settings
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    # The scheme is case-insensitive (RFC 7235 2.1): Bearer, bearer and BEARER are one.
    role = roles.role_of(settings, token.strip()) if scheme.lower() == "bearer" and token else None
    if role is None:
        raise ApiError(401, "unauthorized", "a valid API key is required: Authorization: Bearer <key>")
    # The scope's path, as routing reads it: `request.url` builds the whole URL (host, query) for
    # every request, 5% of the gateway's CPU per single post.
    needed = roles.required_role(request.method, request.scope["path"])
    if not roles.allows(role, needed):
        raise ApiError(403, "forbidden", f"this API key's role ({role}) cannot do this; it needs {needed}",
                       {"role": role, "required": needed})
    request.state.role = role
    limiter: TokenBucket | None = getattr(request.app.state, "limiter", None)
    if limiter is not None:
        wait = limiter.take()
        if wait > 0:
            raise ApiError(429, "rate_limited", f"more than {limiter.rate:g} requests per second; retry later",
                           {"limit_per_s": limiter.rate}, headers={"Retry-After": str(max(1, math.ceil(wait)))})


class TokenBucket:
    """Requests per second with a burst of one second's worth. Wall-clock time on purpose: this
    protects the process, it is not domain time (the virtual clock does not apply)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = rate
        self._at = time.monotonic()

    def take(self) -> float:
        """0 when a request may go now, else the seconds until one may."""
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


def input_error(exc: limits.InputError) -> ApiError:
    """An input limit broken (nurture.limits) as the API's error: 400 not JSON, else 422 naming fields."""
    if exc.malformed:
        return ApiError(400, "malformed", f"the {exc}")  # "the body is not valid JSON: <where, why>"
    return ApiError(422, "invalid", str(exc), {"fields": exc.problems})


async def read_body(request: Request, *, check: bool) -> JsonValue:
    try:
        raw = await request.body()
    except ClientDisconnect as exc:
        raise disconnected() from exc
    return parse_body(raw, check=check)


def disconnected() -> ApiError:
    # Nobody is left to answer; not a server error.
    return ApiError(400, "malformed", "the client disconnected before the whole body arrived")


def parse_body(raw: bytes, *, check: bool = True) -> JsonValue:
    """A request body as JSON, the errors as `read_body` answers them (for a route that reads the
    body itself, at the ASGI layer)."""
    if not raw.strip():
        raise ApiError(400, "malformed", "a JSON body is required")
    try:
        return limits.parse_json(raw, check=check)
    except limits.InputError as exc:
        raise input_error(exc) from exc


async def json_body(request: Request) -> JsonValue:
    """The request body parsed as JSON whatever the Content-Type says (curl -d sends form type);
    400 when it is not JSON, 422 when it breaks an input limit (nurture.limits)."""
    return await read_body(request, check=True)


async def optional_json_body(request: Request) -> JsonValue:
    """As `json_body`, but an action that takes no fields may come with no body at all (`curl -XPOST`):
    an empty one reads as `{}`."""
    if not (await request.body()).strip():
        return {}
    return await read_body(request, check=True)


async def json_body_items(request: Request) -> JsonValue:
    """The body parsed as JSON but not yet checked against the limits: a batch checks each item,
    so that one bad item is refused alone."""
    return await read_body(request, check=False)
