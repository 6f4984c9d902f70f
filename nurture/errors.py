"""The mesh's one error hierarchy, mapped in this module to a gRPC status and to the HTTP error shape.

A servicer refuses a call with a `NurtureError` (`raise`, or `await abort(context, error)` where a raise
would not reach the server's method wrapper in nurture.rpc). Its gRPC status carries the JSON
`{"code", "message", "details"}` the gateway reads, so a machine code and details survive the hop; the
gateway answers every error as docs/API.md's `{"error": {"code", "message", "details"}}` (`HttpError`),
a service's status mapped by `http_error_from_rpc`. Which gRPC codes a caller may retry: `TRANSIENT`.

    class                 gRPC status         HTTP  code (default; an instance may name its own)
    NurtureError          INTERNAL            500   internal
    ├── InvalidArgument   INVALID_ARGUMENT    422   invalid        (invalid_fields: details.fields)
    ├── NotFound          NOT_FOUND           404   not_found
    ├── Conflict          ALREADY_EXISTS      409   conflict
    ├── Unavailable       UNAVAILABLE         503   unavailable    (Retry-After)
    ├── Unconfirmed       DEADLINE_EXCEEDED   503   unconfirmed    (Retry-After)
    ├── Unauthenticated   UNAUTHENTICATED     401   unauthorized
    ├── Internal          INTERNAL            500   internal
    └── gateway.deps.ApiError                 any   the gateway's own refusals
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, NoReturn

import grpc

from nurture.jsontypes import JsonMapping, JsonObject

log = logging.getLogger(__name__)

# A status message crosses processes in HTTP/2 trailers: gRPC refuses metadata past 8 KB (the caller
# then sees RESOURCE_EXHAUSTED, which reads as overload), so a message that may hold a driver's or a
# peer's text is cut to this.
MAX_STATUS_MESSAGE = 300
# What the gateway sends of a message at most (a service's text is for a person, not a document).
MAX_HTTP_MESSAGE = 500


class NurtureError(Exception):
    """A refusal with a machine code (`code`), a sentence for a person (`message`) and `details`."""

    grpc_status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    http_status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None, details: JsonMapping | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: JsonObject = dict(details or {})

    def status_details(self) -> str:
        """The gRPC status message: the JSON the gateway turns back into this error."""
        return json.dumps({"code": self.code, "message": self.message, "details": self.details})


class InvalidArgument(NurtureError):
    """The caller must change the request (a `422` at the gateway)."""

    grpc_status = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 422
    code = "invalid"


class NotFound(NurtureError):
    grpc_status = grpc.StatusCode.NOT_FOUND
    http_status = 404
    code = "not_found"


class Conflict(NurtureError):
    """The request clashes with what is stored (a `409`; docs/API.md: it names no other lead)."""

    grpc_status = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409
    code = "conflict"


class Unavailable(NurtureError):
    """Not now: a dependency is down or storage lost a race; the caller retries (a `503`)."""

    grpc_status = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    code = "unavailable"


class Unconfirmed(NurtureError):
    """Done, but a step the answer waits for did not finish in time (scoring's events are stored, not
    yet on the bus). Not UNAVAILABLE: the channels' retry policy re-sends an UNAVAILABLE call by
    itself, and events without an idempotency key would be stored twice. The caller retries with its
    keys (a `503`)."""

    grpc_status = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 503
    code = "unconfirmed"


class Unauthenticated(NurtureError):
    """The call carries no credential this service accepts."""

    grpc_status = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401
    code = "unauthorized"


class Internal(NurtureError):
    """Our fault: a bug or an unexpected answer. The message names no SQL, stack or address."""


def invalid_fields(problems: Mapping[str, str]) -> InvalidArgument:
    """An INVALID_ARGUMENT listing each field's problem (`details.fields`, which the gateway passes on)."""
    return InvalidArgument("; ".join(f"{k} {v}" for k, v in problems.items()), details={"fields": dict(problems)})


async def abort(context: grpc.aio.ServicerContext, error: NurtureError) -> NoReturn:
    """End the call with this error's status and JSON message."""
    await context.abort(error.grpc_status, error.status_details())
    raise AssertionError("unreachable: context.abort raises")


# The gRPC codes after which the same call may succeed later. UNKNOWN and INTERNAL are in: a peer's
# bug or restart mid-call is not the caller's to fix, and dropping the work would lose it. So is
# UNIMPLEMENTED: in a mesh upgraded one process at a time, a newer caller meets it until the peer is
# upgraded too, and the work must wait for that, not be dropped.
TRANSIENT: frozenset[grpc.StatusCode] = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.CANCELLED,
})


def transient(code: grpc.StatusCode | None) -> bool:
    return code in TRANSIENT


# -- the HTTP side -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class HttpError:
    """An error as the HTTP API answers it (docs/API.md, Conventions)."""

    status: int
    code: str
    message: str
    details: JsonObject = field(default_factory=dict)
    headers: dict[str, str] | None = None

    def body(self) -> JsonObject:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    @classmethod
    def of(cls, error: NurtureError, headers: Mapping[str, str] | None = None) -> HttpError:
        if headers is None and error.http_status in (429, 503):
            headers = {"Retry-After": "2"}
        return cls(error.http_status, error.code, error.message, error.details,
                   dict(headers) if headers is not None else None)


# A service's status as the gateway answers it, when the service's message does not name a code.
GRPC_TO_HTTP: Mapping[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (422, "invalid"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "conflict"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "conflict"),
    grpc.StatusCode.ABORTED: (409, "conflict"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limited"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "forbidden"),
    # Services refuse the gateway's own mesh credential (NURTURE_MESH_TOKEN differs): our fault, not the
    # client's, whose API key was accepted already.
    grpc.StatusCode.UNAUTHENTICATED: (500, "internal"),
    grpc.StatusCode.UNAVAILABLE: (503, "unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (503, "unavailable"),
    # The service stopped with the call in flight (a restart): as transient as UNAVAILABLE.
    grpc.StatusCode.CANCELLED: (503, "unavailable"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "not_implemented"),
}


def http_error_from_rpc(exc: grpc.aio.AioRpcError) -> HttpError:
    """The HTTP answer to a service's failed call: its own code, message and details when it sent a
    NurtureError's JSON; otherwise the status's row above, with a transport's or a crash's text logged
    and replaced (it may name internal addresses or SQL)."""
    status, code = GRPC_TO_HTTP.get(exc.code(), (500, "internal"))
    message = exc.details() or exc.code().name
    details: JsonObject = {}
    ours = False
    try:
        parsed = json.loads(message)
        if isinstance(parsed, dict) and "message" in parsed:
            code, message, details = parsed.get("code", code), parsed["message"], parsed.get("details", {})
            ours = True
    except ValueError:
        pass
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and not ours:
        # gRPC's own limits (message or metadata size) say RESOURCE_EXHAUSTED too; only a service's
        # own refusal is overload. Anything else is our fault, and a 429 would invite a wrong retry.
        log.error("a call in the mesh hit a transport limit: %s", message[:300])
        status, code, message = 500, "internal", "a call inside the mesh exceeded a transport limit"
    elif exc.code() == grpc.StatusCode.UNAUTHENTICATED:
        log.error("a service refused the gateway's mesh credential: %s", message[:300])
        message, details = "the gateway is misconfigured: a service behind it refused its credential", {}
    elif status == 500 and not ours:
        log.error("a service failed: %s %s", exc.code().name, message[:300])
        message = f"a service failed ({exc.code().name})"
    elif status == 503 and not ours:
        # A transport error's text names internal addresses ("ipv4:10.0.3.7:50051: connection
        # refused"): logged here, never sent to the caller (docs/INPUT-LIMITS.md).
        log.warning("a service is unavailable: %s %s", exc.code().name, message[:300])
        message = "retry later"
    message = message[:MAX_HTTP_MESSAGE]
    headers = {"Retry-After": "2"} if status in (503, 429) else None
    if status == 503:
        message = f"a service behind the gateway is unavailable: {message}"
    return HttpError(status, str(code), message, details if isinstance(details, dict) else {}, headers)
