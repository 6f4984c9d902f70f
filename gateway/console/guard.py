"""What every console route shares: the signed-in session, the form (with its CSRF token checked), the
role a route needs, and errors shown as pages rather than the API's JSON."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, quote

import grpc
from fastapi import Request
from starlette.responses import RedirectResponse, Response

from gateway import roles
from gateway.console import data, session
from gateway.console.render import page, protect
from gateway.deps import ApiError, Mesh
from nurture.settings import Settings

MAX_FORM_BYTES = 1_048_576  # the editor posts whole journey documents; the gateway's body limit applies too


def mesh_of(request: Request) -> Mesh:
    value: Mesh = request.app.state.mesh
    return value


def settings_of(request: Request) -> Settings:
    return mesh_of(request).settings


def redirect(url: str) -> Response:
    return protect(RedirectResponse(url, status_code=303))


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (first value each). Parsed here: small forms, and no extra package."""
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        raise ApiError(413, "too_large", "the form is too large")
    parsed = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


Handler = Callable[[Request, session.Session], Awaitable[Response]]


async def guarded(request: Request, handler: Handler, *, needed: str = "viewer", form: bool = False) -> Response:
    """Run a page handler for a signed-in user whose role allows it; errors as pages, not JSON."""
    settings = settings_of(request)
    current = session.current(settings, request)
    if current is None:
        if form:
            return error_page(request, None, 403, "Your session has ended: sign in again.")
        return redirect(f"/console/sign-in?next={quote(request.url.path)}")
    if form:
        fields = await read_form(request)
        if not session.csrf_valid(current, fields.get("csrf", "")):
            return error_page(request, current, 403, "This form is stale or did not come from the console (CSRF).")
        request.state.form = fields
    if not roles.allows(current.role, needed):
        return error_page(request, current, 403, f"Your role ({current.role}) cannot do this; it needs {needed}.")
    started = time.perf_counter()
    try:
        response = await handler(request, current)
        # The page's own time in the gateway (bench/console.py reads it; browsers show it in devtools).
        response.headers["Server-Timing"] = f"console;dur={(time.perf_counter() - started) * 1000:.1f}"
        return response
    except ApiError as exc:
        return error_page(request, current, exc.status, exc.message)
    except grpc.aio.AioRpcError as exc:
        status = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 422,
                  grpc.StatusCode.FAILED_PRECONDITION: 409}.get(exc.code(), 503)
        shown = exc.details() if status != 503 else "a service behind the gateway is unavailable; retry later"
        return error_page(request, current, status, data.readable_error(shown or exc.code().name))


def error_page(request: Request, current: session.Session | None, status: int, message: str) -> Response:
    return page("error.html", status=status, title=f"Error {status}", message=message, session=current)
