"""The gateway's ASGI app: routers, auth, the error shape, size limits, tracing, gRPC error mapping.

`create_app(settings)` builds it; `python -m gateway` (or uvicorn with `gateway.app:app_from_env`)
serves it. Every router module in gateway/routes is included, so an API area is added by a file.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import pkgutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import trace
from starlette.exceptions import HTTPException as StarletteHTTPException

import gateway.routes
from gateway.deps import ApiError, Mesh
from nurture.clock import make_clock
from nurture.rpc import channel
from nurture.settings import SERVICES, Settings, load_settings

log = logging.getLogger(__name__)
tracer = trace.get_tracer("nurture.gateway")

_GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (422, "invalid"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "conflict"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "conflict"),
    grpc.StatusCode.ABORTED: (409, "conflict"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limited"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "forbidden"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "unauthorized"),
    grpc.StatusCode.UNAVAILABLE: (503, "unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (503, "unavailable"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "not_implemented"),
}


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details or {}}},
                        status_code=status, headers=headers)


def _grpc_error(exc: grpc.aio.AioRpcError) -> JSONResponse:
    status, code = _GRPC_TO_HTTP.get(exc.code(), (500, "internal"))
    message = exc.details() or exc.code().name
    details: dict[str, Any] = {}
    try:
        parsed = json.loads(message)
        if isinstance(parsed, dict) and "message" in parsed:
            code, message, details = parsed.get("code", code), parsed["message"], parsed.get("details", {})
    except ValueError:
        pass
    headers = {"Retry-After": "2"} if status in (503, 429) else None
    if status == 503:
        message = f"a service behind the gateway is unavailable: {message}"
    return error_response(status, code, message, details, headers)


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
            mesh.channels[service] = channel(settings.address_of(service))
        yield
        for ch in mesh.channels.values():
            await ch.close()

    app = FastAPI(title="BorderBridge Nurture gateway", version="1", lifespan=lifespan,
                  description="The HTTP door into the nurture mesh (see shared/API.md).")
    app.state.mesh = Mesh(settings=settings)
    app.state.clock = make_clock(settings.clock, settings.redis_url)
    app.state.clock_lock = asyncio.Lock()

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

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
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal", "an unexpected error; it has been logged")

    @app.middleware("http")
    async def _limits_and_trace(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return error_response(400, "malformed", "bad Content-Length")
            if int(length) > settings.max_body_bytes:
                return error_response(413, "too_large", f"the body exceeds {settings.max_body_bytes} bytes",
                                      {"max_bytes": settings.max_body_bytes})
        elif request.method in ("POST", "PUT", "PATCH"):
            body = await request.body()  # chunked: read (bounded by the server) and check
            if len(body) > settings.max_body_bytes:
                return error_response(413, "too_large", f"the body exceeds {settings.max_body_bytes} bytes")
        with tracer.start_as_current_span(f"{request.method} {request.url.path}", kind=trace.SpanKind.SERVER,
                                          attributes={"http.method": request.method,
                                                      "http.target": request.url.path}) as span:
            response = await call_next(request)
            span.set_attribute("http.status_code", response.status_code)
            return response

    _include_routers(app)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory: settings from NURTURE_* variables."""
    return create_app(load_settings())
