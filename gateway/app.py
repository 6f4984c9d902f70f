"""The gateway's ASGI app: routers, auth, the error shape, size limits, tracing, gRPC error mapping.

`create_app(settings)` builds it; `python -m gateway` (or uvicorn with `gateway.app:app_from_env`)
serves it. Every router module in gateway/routes is included, so an API area is added by a file.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import pkgutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry import trace
from opentelemetry.util.types import AttributeValue
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import Message, Receive, Scope, Send

import gateway.routes
from gateway.deps import ApiError, Mesh, TokenBucket, json_body, require_key
from gateway.ingest import EventSender
from gateway.openapi import install_openapi
from gateway.routes.events import event_properties, record_event
from gateway.routes.tracking import collect_asgi
from gateway.tracking.state import Tracking
from nurture import jsoncodec, revenue, telemetry
from nurture.clock import make_clock
from nurture.errors import HttpError, NurtureError, http_error_from_rpc
from nurture.jsontypes import JsonObject
from nurture.rpc import channel
from nurture.settings import SERVICES, Settings, load_settings

log = logging.getLogger(__name__)
tracer = telemetry.tracer("nurture.gateway")

_LINK_PREFIXES = ("/u/", "/t/o/", "/t/c/")
# The routes answered by the middleware itself (`LimitsAndTracing`): their span's name and attributes.
_HOT_ROUTES: dict[tuple[str, str], tuple[str, dict[str, AttributeValue]]] = {
    (method, path): (f"{method} {path}", {"http.method": method, "http.target": path})
    for method, path in (("POST", "/v1/events"), ("POST", "/t/v1/collect"))}


def _traced_path(path: str) -> str:
    """The path as traces show it: a link's token acts for its lead (one-click unsubscribe), so traces
    (files, the collector, Jaeger) get `{token}` instead."""
    for prefix in _LINK_PREFIXES:
        if path.startswith(prefix):
            return prefix + "{token}"
    return path


def error_response(status: int, code: str, message: str, details: JsonObject | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return _respond(HttpError(status, code, message, details or {}, headers))


def _respond(error: HttpError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _grpc_error(exc: grpc.aio.AioRpcError) -> JSONResponse:
    return _respond(http_error_from_rpc(exc))


def _include_routers(app: FastAPI) -> None:
    for info in sorted(pkgutil.iter_modules(gateway.routes.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"gateway.routes.{info.name}")
        router = getattr(module, "router", None)
        if router is not None:
            app.include_router(router)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        mesh = app.state.mesh
        for service in SERVICES:
            mesh.channels[service] = channel(settings.address_of(service), settings.mesh_token)
        yield
        for ch in mesh.channels.values():
            await ch.close()
        await app.state.tracking.limits.close()

    # FastAPI's own telemetry is off: it adds spans per dependency and endpoint, metrics and logs to
    # every request (a measured share of the gateway's time); our middleware keeps one span each.
    app = FastAPI(title="BorderBridge Nurture gateway", version="1", lifespan=lifespan,
                  description="The HTTP door into the nurture mesh (see docs/API.md).",
                  telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False})
    app.state.mesh = Mesh(settings=settings)
    app.state.events = EventSender(app.state.mesh, settings.ingest_in_flight, settings.ingest_call_interval_ms / 1000)
    app.state.clock = make_clock(settings)
    app.state.clock_lock = asyncio.Lock()
    app.state.limiter = TokenBucket(settings.rate_limit_per_s) if settings.rate_limit_per_s > 0 else None
    app.state.tracking = Tracking.create(settings, app.state.mesh)  # fails fast on a bad NURTURE_SITE_KEYS
    # The data files posted events are checked and converted with: read (and refused) now, not at the
    # first event that needs them.
    event_properties()
    revenue.load_rates()

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(NurtureError)
    async def _nurture_error(_request: Request, exc: NurtureError) -> JSONResponse:
        return _respond(HttpError.of(exc))

    @app.exception_handler(grpc.aio.AioRpcError)
    async def _rpc_error(_request: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
        return _grpc_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "malformed", "the body is not valid JSON")
        if any(e.get("type") == "missing" and tuple(e.get("loc", ()))[:1] == ("body",) for e in errors):
            return error_response(400, "malformed", "a JSON body is required")
        fields = {".".join(str(p) for p in e.get("loc", ())[1:]) or "body": e.get("msg", "") for e in errors}
        return error_response(422, "invalid", "; ".join(f"{k}: {v}" for k, v in fields.items()), {"fields": fields})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope)) or headers.get("Allow", "")
        return error_response(exc.status_code, code, str(exc.detail), headers=headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal", "an unexpected error; it has been logged")

    _include_routers(app)
    install_openapi(app)
    return LimitsAndTracing(app, settings.max_body_bytes)  # type: ignore[return-value]


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method the API serves at this path (a 405's Allow header), from the OpenAPI document:
    FastAPI makes one route per method, and Starlette's own 405 names only the first that matched."""
    methods: set[str] = set()
    path = scope.get("path", "")
    for template, operations in app.openapi().get("paths", {}).items():
        regex, _, _ = compile_path(template)
        if regex.match(path):
            methods |= {m.upper() for m in operations}
    return sorted(methods)


def _naming_the_trace(send: Send, context: trace.SpanContext) -> Send:
    """`send` with W3C Trace Context's `traceresponse` header (level 2) added to the response: the
    recorded request's trace and span. Nothing else names it, so without it whoever posted an event
    could find the event's trace only by its time (docs/ARCHITECTURE.md, "Tracing")."""
    header = (b"traceresponse", f"00-{context.trace_id:032x}-{context.span_id:016x}-01".encode())

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return sending


class LimitsAndTracing:
    """Plain ASGI middleware (Starlette's BaseHTTPMiddleware costs a task per request): one server
    span per request, and bodies over the limit refused with 413 before anything reads them."""

    def __init__(self, app: FastAPI, max_body: int) -> None:
        self.app = app
        self.max_body = max_body
        self.state = app.state
        self.router = app.router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b""):
            # No id, key or filter holds a NUL, and PostgreSQL text cannot store one.
            await error_response(400, "malformed", "the URL holds a NUL character (%00)")(scope, receive, send)
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            status, code = (413, "too_large") if length.isdigit() else (400, "malformed")
            response = error_response(status, code, f"the body exceeds {self.max_body} bytes"
                                      if status == 413 else "bad Content-Length", {"max_bytes": self.max_body})
            await response(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise ApiError(413, "too_large", f"the body exceeds {self.max_body} bytes")
            return message

        method, path = scope.get("method", ""), scope.get("path", "")
        hot = _HOT_ROUTES.get((method, path))
        # Named by the method alone until the sampler has decided: the route's name and attributes are
        # made only for a recorded span (most are not, at a ratio below 1). The hottest routes' are
        # constants, given at the start.
        if hot is not None:
            span = tracer.start_span(hot[0], kind=trace.SpanKind.SERVER, attributes=hot[1])
        else:
            span = tracer.start_span(method, kind=trace.SpanKind.SERVER)
            if span.is_recording():
                shown = _traced_path(path)
                span.update_name(f"{method} {shown}")
                span.set_attributes({"http.method": method, "http.target": shown})
        if span.is_recording():
            send = _naming_the_trace(send, span.get_span_context())
        with telemetry.as_current(span):
            if hot is None:
                await self.app(scope, limited_receive, send)
            elif path == "/v1/events":
                await self._post_event(scope, limited_receive, send)
            else:
                await collect_asgi(scope, limited_receive, send, self.state.tracking)

    async def _post_event(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The hottest route, answered here: FastAPI's routing, dependency solving and response
        serialisation were a third of the gateway's CPU per event. Same auth, parsing, handler
        and error mapping as the FastAPI route (`gateway.routes.events`)."""
        scope["app"] = self.app
        request = Request(scope, receive)
        response: Response
        try:
            await require_key(request)
            body = await json_body(request)
            payload = await record_event(request, body, request.headers.get("idempotency-key"))
            response = Response(jsoncodec.dumps(payload).encode(), status_code=202, media_type="application/json")
        except ApiError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
        except grpc.aio.AioRpcError as exc:
            response = _grpc_error(exc)
        except Exception:
            log.exception("unexpected error")
            response = error_response(500, "internal", "an unexpected error; it has been logged")
        await response(scope, receive, send)


def app_from_env() -> FastAPI:
    """uvicorn factory: settings from NURTURE_* variables."""
    return create_app(load_settings())
