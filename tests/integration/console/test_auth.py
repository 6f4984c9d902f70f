"""Roles for the API and the console, the session cookie, CSRF, the CSP and escaping, against the real
gateway app over a real scoring service."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI

from gateway.console import session
from nurture.settings import Settings
from tests.integration.console.conftest import KEYS, SESSION_SECRET, app_for, console_settings, csrf_of, sign_in

pytestmark = pytest.mark.anyio


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


async def test_api_roles(console: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, _ = console
    # Everyone reads; a viewer writes nothing (the hot event route included), an editor writes.
    for role in KEYS:
        assert (await client.get("/v1/leads/nobody", headers=bearer(role))).status_code == 404
    r = await client.post("/v1/leads", headers=bearer("viewer"), json={"id": "v-1", "email": "v@example.com"})
    assert r.status_code == 403 and r.json()["error"]["details"] == {"role": "viewer", "required": "editor"}
    r = await client.post("/v1/events", headers=bearer("viewer"), json={"lead_id": "v-1", "type": "page_viewed"})
    assert r.status_code == 403
    r = await client.post("/v1/journeys/webinar/publish", headers=bearer("viewer"), json={"version": 1})
    assert r.status_code == 403
    assert (await client.get("/v1/leads/v-1", headers=bearer("admin"))).status_code == 404  # nothing was stored
    r = await client.post("/v1/leads", headers=bearer("editor"), json={"id": "e-1", "email": "e@example.com"})
    assert r.status_code == 201
    # Operating the mesh is the admin's: the pre-roles key (NURTURE_API_KEY) is admin, so it still works.
    assert (await client.get("/v1/admin/clock", headers=bearer("editor"))).status_code == 403
    assert (await client.get("/v1/admin/clock", headers=bearer("admin"))).status_code == 200
    assert (await client.get("/v1/leads/e-1", headers={"Authorization": "Bearer nope"})).status_code == 401


async def test_sign_in_sets_a_strict_signed_cookie(console: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, _ = console
    r = await client.get("/console/journeys")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/sign-in")
    form = await client.get("/console/sign-in")
    assert "script-src 'self'" in form.headers["content-security-policy"]
    assert "unsafe-inline" not in form.headers["content-security-policy"]
    # No CSRF token: refused before the key is even looked at.
    r = await client.post("/console/sign-in", data={"api_key": KEYS["viewer"]})
    assert r.status_code == 403 and "nurture_session" not in r.headers.get("set-cookie", "")
    r = await client.post("/console/sign-in", data={"csrf": csrf_of(form.text), "api_key": "wrong"})
    assert r.status_code == 401 and "not a valid API key" in r.text
    r = await sign_in(client, KEYS["viewer"])
    assert r.status_code == 303 and r.headers["location"] == "/console/journeys"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("nurture_session="))
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/console"} <= flags and "secure" not in flags
    assert KEYS["viewer"] not in cookie  # the key itself is never in the cookie
    r = await client.get("/console/operations")
    assert r.status_code == 200 and 'data-role="viewer"' in r.text


async def test_cookie_is_secure_behind_https_and_forgeries_fail(settings: Settings) -> None:
    app = app_for(console_settings(settings, public_url="https://nurture.example"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://gw") as client:
        r = await sign_in(client, KEYS["admin"])
        cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("nurture_session="))
        assert "secure" in cookie.lower()
        value = cookie.split(";")[0].split("=", 1)[1]
        # Signed with our secret: the same payload under another secret, or altered, opens nothing.
        payload = session.unseal(SESSION_SECRET, value)
        assert payload is not None
        for forged in (session.seal("another-secret", payload), value[:-2] + "xx",
                       session.seal(SESSION_SECRET, {**payload, "t": 0})):  # expired
            client.cookies.clear()
            client.cookies.set("nurture_session", forged, domain="gw", path="/console")
            assert (await client.get("/console/operations")).status_code == 303


async def test_a_removed_key_ends_its_sessions(settings: Settings) -> None:
    app = app_for(console_settings(settings))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        await sign_in(client, KEYS["editor"])
        cookies = dict(client.cookies)
    later = app_for(console_settings(settings).with_overrides(api_keys={KEYS["viewer"]: "viewer"}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=later), base_url="http://gw",
                                 cookies=cookies) as client:
        assert (await client.get("/console/operations")).status_code == 303


async def test_forms_need_the_session_csrf_and_the_role(console: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, _ = console
    await sign_in(client, KEYS["viewer"])
    page = await client.get("/console/operations")
    token = csrf_of(page.text)
    r = await client.post("/console/journeys/webinar/publish", data={"version": "1"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = await client.post("/console/journeys/webinar/publish", data={"version": "1", "csrf": token})
    assert r.status_code == 403 and "viewer" in r.text and "editor" in r.text
    r = await client.post("/console/sign-out", data={"csrf": "wrong"})
    assert r.status_code == 403
    r = await client.post("/console/sign-out", data={"csrf": token})
    assert r.status_code == 303
    assert (await client.get("/console/operations")).status_code == 303


async def test_what_a_lead_supplied_is_escaped(console: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, _ = console
    evil = '<script>alert("x")</script>'
    r = await client.post("/v1/leads", headers=bearer("editor"), json={
        "id": "x-1", "email": "x@example.com", "first_name": evil, "attributes": {"note": '"><img src=x onerror=1>'}})
    assert r.status_code == 201
    await sign_in(client, KEYS["viewer"])
    r = await client.get("/console/leads/x-1")
    assert r.status_code == 200, r.text
    assert evil not in r.text and "&lt;script&gt;alert(" in r.text
    assert "<img" not in r.text
    # The page itself runs no inline script and no inline style (the CSP would block them anyway).
    assert not re.search(r"<script(?![^>]*\bsrc=)", r.text) and " style=" not in r.text
    assert r.headers["content-security-policy"].startswith("default-src 'self'")


async def test_leads_search(console: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, _ = console
    for i in range(3):
        r = await client.post("/v1/leads", headers=bearer("editor"),
                              json={"id": f"s-{i}", "email": f"s{i}@example.com"})
        assert r.status_code == 201
    await sign_in(client, KEYS["viewer"])
    everyone = await client.get("/console/leads")
    assert {f"s-{i}" for i in range(3)} <= set(re.findall(r'data-lead="([^"]+)"', everyone.text))
    one = await client.get("/console/leads", params={"email": "s1@example.com"})
    assert re.findall(r'data-lead="([^"]+)"', one.text) == ["s-1"]
    bad = await client.get("/console/leads", params={"min_score": "lots"})
    assert bad.status_code == 422 and "min_score" in bad.text


async def test_leads_search_matches_the_start_of_an_email_or_a_name_in_any_case(
        console: tuple[httpx.AsyncClient, FastAPI]) -> None:
    """The search matched the exact email only: the start of an email, a first or a last name finds the
    lead, in any case, in the console and through GET /v1/leads?q= alike."""
    client, _ = console
    people = {"p-ana": {"email": "ana.silva@example.com", "first_name": "Ana", "last_name": "Silva"},
              "p-bob": {"email": "bob@example.org", "first_name": "Bob", "last_name": "Anderson"},
              "p-cy": {"email": "CY@Example.net"}, "p-dee": {"email": "dee@banana.example"}}
    for lead_id, fields in people.items():
        r = await client.post("/v1/leads", headers=bearer("editor"), json={"id": lead_id, **fields})
        assert r.status_code == 201, r.text
    expected = {"an": ["p-ana", "p-bob"], "SIL": ["p-ana"], "cy@ex": ["p-cy"], "bob@EXAMPLE.org": ["p-bob"],
                "example": [], "nobody": []}
    for q, ids in expected.items():
        api = await client.get("/v1/leads", headers=bearer("viewer"), params={"q": q})
        assert api.status_code == 200, api.text
        assert [lead["id"] for lead in api.json()["items"] if lead["id"].startswith("p-")] == ids, q
    await sign_in(client, KEYS["viewer"])
    for q, ids in expected.items():
        page = await client.get("/console/leads", params={"q": q})
        assert [i for i in re.findall(r'data-lead="([^"]+)"', page.text) if i.startswith("p-")] == ids, q
