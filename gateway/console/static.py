"""The console's static files (its own script and style, and the vendored libraries refreshed by
tools/vendor_console.py), served with the console's security headers and cached by content version."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from starlette.responses import Response

from gateway.console.render import protect

FOLDER = Path(__file__).parent / "static"
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".json": "application/json"}


@cache
def _files() -> dict[str, tuple[bytes, str]]:
    # Read once: a fixed set, so a name is looked up, never joined to a path (no traversal possible).
    return {p.name: (p.read_bytes(), TYPES[p.suffix]) for p in FOLDER.iterdir()
            if p.is_file() and p.suffix in TYPES}


def static_response(name: str) -> Response:
    found = _files().get(name)
    if found is None:
        return protect(Response("not found", status_code=404, media_type="text/plain"))
    body, media_type = found
    response = Response(body, media_type=media_type)
    protect(response)
    # Pages link them with ?v=<version>; a refresh changes the version, so a day of caching is safe.
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response
