"""Rendering console pages: one Jinja2 environment with autoescape on for every template (whatever a
lead supplied is escaped), and the headers every console response carries.

The Content-Security-Policy allows scripts and styles from our own origin only, so no inline script
or style runs even if something slipped past escaping; pages pass data to scripts in `data-*`
attributes and `<script type="application/json">` blocks, which are data, not code.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader
from starlette.responses import HTMLResponse, Response

HERE = Path(__file__).parent
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",  # pages show personal data: not kept by shared caches or the back button
}

env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True,
                  trim_blocks=True, lstrip_blocks=True)


def shown(value: object, empty: str = "—") -> str:
    """A value as a person reads it, not as Python prints it: yes/no, a list joined by commas, `empty`
    for none (the pages printed "True", "['CA', 'AU']" and a row named "None")."""
    if value is None:
        return empty
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(shown(v) for v in value) or empty
    if isinstance(value, dict):
        return ", ".join(f"{k}: {shown(v)}" for k, v in value.items()) or empty
    return str(value)


env.filters["shown"] = shown


def protect(response: Response) -> Response:
    """The console's security headers on any response."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def page(template: str, status: int = 200, **context: object) -> HTMLResponse:
    html = env.get_template(template).render(**context)
    response = HTMLResponse(html, status_code=status)
    protect(response)
    return response
