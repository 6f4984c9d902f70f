"""The snippet in a real browser (Debian's Chromium driven by Playwright, as the console's browser test):
a test site on another local origin includes `/t/nurture.js` with its site key and a queued call made
before the snippet loaded, a visitor browses anonymously (a full page load, a pricing page, a
pushState navigation and a back button), then identifies; the lead's timeline, score and
personalization show the merged history, and the host page sees no JavaScript error.

Skipped, saying how to enable it, where Chromium or Playwright is missing (see console/test_browser.py)."""

from __future__ import annotations

import asyncio
import html
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright  # noqa: E402  (console/test_browser skips without it)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from gateway.tracking import linktoken
from nurture.settings import Settings
from tests.conftest import free_port
from tests.helpers.serving import serve
from tests.integration.console.test_browser import CHROMIUM, Watched
from tests.integration.tracking.mesh import SITE_KEY, TrackingMesh, tracking_mesh

pytestmark = pytest.mark.anyio

# A person's browser, not a headless one: HeadlessChrome is on the bot list (gateway/tracking/data/bots.txt).
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"


def site_app(gateway: str) -> Starlette:
    """The test site: pages that carry the snippet, each with its category in a meta tag."""

    def page(title: str, category: str, body: str = "", flags: str = "") -> HTMLResponse:
        return HTMLResponse(
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><meta name='nurture:category' content='{category}'>"
            # The stub pattern: calls made before the snippet loads are queued and replayed.
            "<script>window.nurture = window.nurture || [];"
            "nurture.push(['track', 'content_viewed', {topic: 'canada', category: 'country'}]);</script>"
            f"<script src='{gateway}/t/nurture.js' data-site-key='{SITE_KEY}' {flags} async></script>"
            f"</head><body><h1>{html.escape(title)}</h1>{body}"
            "<button id='spa' onclick=\"history.pushState({}, '', '/pricing/family')\">family plan</button>"
            "</body></html>")

    async def home(_: Request) -> HTMLResponse:
        return page("Move to Canada", "country")

    async def pricing(_: Request) -> HTMLResponse:
        return page("Pricing", "pricing")

    async def with_consent(_: Request) -> HTMLResponse:
        return page("Move to Canada", "country", flags="data-require-consent")

    async def favicon(_: Request) -> Response:
        return Response(status_code=204)

    return Starlette(routes=[Route("/", home), Route("/pricing", pricing), Route("/pricing/family", pricing),
                             Route("/consent", with_consent), Route("/favicon.ico", favicon)])


@pytest.fixture
async def sites(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[TrackingMesh, str, str]]:
    gw_port, site_port = free_port(), free_port()
    site = f"http://localhost:{site_port}"  # another origin than the gateway's 127.0.0.1:<port>
    async with tracking_mesh(settings, tmp_path, origins=(site,)) as mesh:
        gateway = f"http://127.0.0.1:{gw_port}"
        servers = [await serve(mesh.app, gw_port), await serve(site_app(gateway), site_port)]
        try:
            yield mesh, gateway, site
        finally:
            for server, task in servers:
                server.should_exit = True
                await task


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           # The person's User-Agent on every request, also the beacons a
                                           # page sends as it goes (Playwright's per-context one misses
                                           # those, and HeadlessChrome's is on the bot list).
                                           args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                                 f"--user-agent={USER_AGENT}"])
        yield launched
        await launched.close()


async def visitor_events(mesh: TrackingMesh, page: Any) -> int:
    from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
    from tests.conftest import mesh_channel

    vid = await page.evaluate("window.nurture.visitorId()")
    async with mesh_channel(mesh.settings.scoring_addr) as ch:
        try:
            got = await scoring_pb2_grpc.ScoringStub(ch).GetVisitor(scoring_pb2.VisitorRequest(visitor_id=vid))
        except Exception:
            return 0
    return int(got.anonymous_events)


async def until(check: Any, want: int) -> None:
    for _ in range(200):
        if await check() >= want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached {want}: {await check()}")


async def test_a_visitor_browses_anonymously_then_identifies(sites: tuple[TrackingMesh, str, str],
                                                             browser: Browser) -> None:
    mesh, _gateway, site = sites
    context = await browser.new_context(user_agent=USER_AGENT)
    context.set_default_timeout(15_000)
    w = Watched(await context.new_page())

    await w.open(f"{site}/")
    await until(lambda: visitor_events(mesh, w.page), 2)  # the page view and the queued content view
    vid = await w.page.evaluate("window.nurture.visitorId()")
    assert await w.page.evaluate("localStorage.getItem('nurture_vid')") == vid
    await w.open(f"{site}/pricing")
    assert await w.page.evaluate("window.nurture.visitorId()") == vid  # the same first-party id
    await until(lambda: visitor_events(mesh, w.page), 4)
    await w.page.click("#spa")  # pushState: a page view without a load
    await until(lambda: visitor_events(mesh, w.page), 5)
    await w.page.go_back()  # popstate back to /pricing
    await until(lambda: visitor_events(mesh, w.page), 6)
    anonymous = await w.page.evaluate("window.nurture.personalization()")
    assert anonymous["known"] is False and anonymous["next_best_action"]

    result = await w.page.evaluate("window.nurture.identify({email: 'mia@example.com', first_name: 'Mia'})")
    assert result == {"identified": True, "merged": 6}
    await mesh.settle()
    known = await w.page.evaluate("window.nurture.personalization()")
    assert known["known"] is True
    assert w.errors == []

    page = await mesh.api("GET", "/v1/leads?limit=10")
    mia = next(x for x in (page.get("items") or page.get("leads")) if x["email"] == "mia@example.com")
    assert mia["score"] > 0
    timeline = (await mesh.api("GET", f"/v1/leads/{mia['id']}/timeline"))["items"]
    views = [i["details"]["properties"]["page"] for i in timeline if i["type"] == "page_viewed"]
    assert views == ["/", "/pricing", "/pricing/family", "/pricing"]
    assert [i["details"]["properties"].get("category") for i in timeline if i["type"] == "page_viewed"] == [
        "country", "pricing", "pricing", "pricing"]
    merged = [i for i in timeline if i["type"] == "visitor_merged"]
    assert len(merged) == 1 and f"merged 6 anonymous events from visitor {vid}" in merged[0]["summary"]
    assert any(i["kind"] == "score" for i in timeline)
    api_view = await mesh.api("GET", f"/v1/leads/{mia['id']}/personalization")
    assert {k: known[k] for k in ("segment", "featured_countries", "recommended_content", "next_best_action")} == {
        k: api_view[k] for k in ("segment", "featured_countries", "recommended_content", "next_best_action")}
    await context.close()


async def test_no_id_is_kept_before_consent_where_the_site_asks_for_it(sites: tuple[TrackingMesh, str, str],
                                                                      browser: Browser) -> None:
    mesh, _gateway, site = sites
    context = await browser.new_context(user_agent=USER_AGENT)
    w = Watched(await context.new_page())
    await w.open(f"{site}/consent")  # the snippet with data-require-consent
    await w.page.wait_for_load_state("networkidle")
    assert await w.page.evaluate("window.nurture.loaded") is True
    assert await w.page.evaluate("window.nurture.visitorId()") is None
    assert await w.page.evaluate("localStorage.getItem('nurture_vid')") is None
    assert "_nurture_vid" not in await w.page.evaluate("document.cookie")
    await w.page.evaluate("window.nurture.consent(true)")
    vid = await w.page.evaluate("window.nurture.visitorId()")
    assert vid and await w.page.evaluate("localStorage.getItem('nurture_vid')") == vid
    assert f"_nurture_vid={vid}" in await w.page.evaluate("document.cookie")
    # The page view and the queued call, kept in memory until consent, went after it.
    await until(lambda: visitor_events(mesh, w.page), 2)
    await w.page.evaluate("window.nurture.consent(false)")
    assert await w.page.evaluate("localStorage.getItem('nurture_vid')") is None
    assert "_nurture_vid" not in await w.page.evaluate("document.cookie")
    assert w.errors == []
    await context.close()


async def merged_notes(mesh: TrackingMesh, lead_id: str) -> list[dict[str, Any]]:
    timeline = (await mesh.api("GET", f"/v1/leads/{lead_id}/timeline"))["items"]
    return [i for i in timeline if i["type"] == "visitor_merged"]


async def until_merged(mesh: TrackingMesh, lead_id: str, notes: int) -> None:
    async def count() -> int:
        return len(await merged_notes(mesh, lead_id))
    await until(count, notes)


async def test_an_email_click_lands_identified_and_merges_once_in_order(sites: tuple[TrackingMesh, str, str],
                                                                         browser: Browser) -> None:
    """The click of one of our emails lands with `nurture_id=<signed token>`: the snippet identifies the
    visitor as that lead, its anonymous history (this page's view included) merges once, in order, and
    the token leaves the address bar. A second click merges nothing more; another device of the same
    person merges its own history the same way."""
    mesh, _gateway, site = sites
    await mesh.api("POST", "/v1/leads", json={"id": "ana", "email": "ana@example.com"})
    token = linktoken.sign(mesh.settings.secret, "ana", datetime.now(UTC))
    context = await browser.new_context(user_agent=USER_AGENT)
    context.set_default_timeout(15_000)
    w = Watched(await context.new_page())
    await w.open(f"{site}/")
    await until(lambda: visitor_events(mesh, w.page), 2)  # each page: its view and the queued content view
    await w.open(f"{site}/pricing")
    await until(lambda: visitor_events(mesh, w.page), 4)

    await w.open(f"{site}/pricing/family?utm_source=email&{linktoken.PARAM}={token}")
    await until_merged(mesh, "ana", 1)
    assert linktoken.PARAM not in w.page.url and "utm_source=email" in w.page.url
    [note] = await merged_notes(mesh, "ana")
    vid = await w.page.evaluate("window.nurture.visitorId()")
    assert f"merged 5 anonymous events from visitor {vid}" in note["summary"]

    async def views() -> list[str]:
        timeline = (await mesh.api("GET", "/v1/leads/ana/timeline"))["items"]
        return [i["details"]["properties"]["page"] for i in timeline if i["type"] == "page_viewed"]

    assert await views() == ["/", "/pricing", "/pricing/family"]
    # The same email clicked again: identified again, nothing merged twice; this view goes to the lead.
    await w.open(f"{site}/pricing/family?{linktoken.PARAM}={token}")
    for _ in range(200):
        if len(await views()) == 4:
            break
        await asyncio.sleep(0.05)
    assert await views() == ["/", "/pricing", "/pricing/family", "/pricing/family"]
    assert len(await merged_notes(mesh, "ana")) == 1
    assert w.errors == []

    # Another device of the same person: its own anonymous browsing, then the click.
    laptop = await browser.new_context(user_agent=USER_AGENT)
    laptop.set_default_timeout(15_000)
    other = Watched(await laptop.new_page())
    await other.open(f"{site}/")
    await until(lambda: visitor_events(mesh, other.page), 2)
    assert await other.page.evaluate("window.nurture.visitorId()") != vid
    await other.open(f"{site}/pricing?{linktoken.PARAM}={token}")
    await until_merged(mesh, "ana", 2)
    notes = await merged_notes(mesh, "ana")
    assert "merged 3 anonymous events" in notes[1]["summary"]
    assert (await views())[:5] == ["/", "/pricing", "/pricing/family", "/pricing/family", "/"]
    assert other.errors == []
    await laptop.close()
    await context.close()


async def test_pending_events_leave_with_send_beacon_when_the_page_is_left(sites: tuple[TrackingMesh, str, str],
                                                                           browser: Browser) -> None:
    mesh, _gateway, site = sites
    context = await browser.new_context(user_agent=USER_AGENT)
    # Count the snippet's beacons (the real navigator.sendBeacon still sends them).
    await context.add_init_script("""(() => { const real = navigator.sendBeacon.bind(navigator);
        window.__beacons = 0;
        navigator.sendBeacon = (url, body) => { window.__beacons += 1; return real(url, body); }; })();""")
    w = Watched(await context.new_page())
    await w.open(f"{site}/")
    await until(lambda: visitor_events(mesh, w.page), 2)
    vid = await w.page.evaluate("window.nurture.visitorId()")
    # An event tracked just before the page is hidden goes by beacon, at once (not after the 50 ms batch).
    beacons = await w.page.evaluate("""() => {
        window.nurture.track('resource_downloaded', {resource: 'canada-checklist.pdf', category: 'country'});
        Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});
        document.dispatchEvent(new Event('visibilitychange'));
        return window.__beacons; }""")
    assert beacons == 1
    await until(lambda: visitor_events(mesh, w.page), 3)
    # A page left right after a call: what it tracked still arrives (by beacon on pagehide, or the batch).
    await w.page.evaluate(f"""() => {{
        window.nurture.track('video_watched', {{video: 'intro', percent: 50}});
        window.location.href = '{site}/pricing'; }}""")
    await w.page.wait_for_url(f"{site}/pricing")
    await w.page.wait_for_load_state("load")
    await until(lambda: visitor_events(mesh, w.page), 6)  # the video, then this page's view and content view
    assert await w.page.evaluate("window.nurture.visitorId()") == vid

    assert w.errors == []
    await context.close()


async def test_global_privacy_control_keeps_the_snippet_silent(sites: tuple[TrackingMesh, str, str],
                                                               browser: Browser) -> None:
    """A browser saying Global Privacy Control (or Do-Not-Track): no id is made or kept and nothing is
    sent, on a site that does not set `data-honor-dnt="false"`; the host page still works."""
    mesh, gateway, site = sites
    context = await browser.new_context(user_agent=USER_AGENT)
    await context.add_init_script(
        "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true});")
    w = Watched(await context.new_page())
    sent: list[str] = []
    w.page.on("request", lambda r: sent.append(r.url) if "/t/v1/" in r.url else None)
    await w.open(f"{site}/")
    await w.page.wait_for_load_state("networkidle")
    assert await w.page.evaluate("window.nurture.loaded") is True
    await w.page.evaluate("window.nurture.track('content_viewed', {topic: 'canada'})")
    assert await w.page.evaluate("window.nurture.identify({email: 'gpc@example.com'})") == {"identified": False}
    assert await w.page.evaluate("window.nurture.visitorId()") is None
    assert await w.page.evaluate("localStorage.getItem('nurture_vid')") is None
    assert "_nurture_vid" not in await w.page.evaluate("document.cookie")
    await asyncio.sleep(0.3)  # past the snippet's 50 ms batch
    assert sent == [], sent
    page = await mesh.api("GET", "/v1/leads?limit=10")
    assert not [x for x in page.get("items", page.get("leads")) if x["email"] == "gpc@example.com"]
    assert w.errors == [] and gateway
    await context.close()


async def test_an_email_click_before_consent_identifies_once_consent_is_given(
        sites: tuple[TrackingMesh, str, str], browser: Browser) -> None:
    """On a site that asks for consent, the click's token leaves the address bar at once but nothing is
    sent: it waits in the page's memory, and identifies the visitor (after the page's events) on consent."""
    mesh, _gateway, site = sites
    await mesh.api("POST", "/v1/leads", json={"id": "noa", "email": "noa@example.com"})
    token = linktoken.sign(mesh.settings.secret, "noa", datetime.now(UTC))
    context = await browser.new_context(user_agent=USER_AGENT)
    context.set_default_timeout(15_000)
    w = Watched(await context.new_page())
    sent: list[str] = []
    w.page.on("request", lambda r: sent.append(r.url) if "/t/v1/" in r.url else None)
    await w.open(f"{site}/consent?{linktoken.PARAM}={token}")
    await w.page.wait_for_load_state("networkidle")
    assert linktoken.PARAM not in w.page.url
    await asyncio.sleep(0.2)
    assert sent == [] and await merged_notes(mesh, "noa") == []
    await w.page.evaluate("window.nurture.consent(true)")
    await until_merged(mesh, "noa", 1)
    vid = await w.page.evaluate("window.nurture.visitorId()")
    [note] = await merged_notes(mesh, "noa")
    assert f"merged 2 anonymous events from visitor {vid}" in note["summary"]  # the view and the queued call
    assert [u.split("/t/v1/")[1].split("?")[0] for u in sent] == ["collect", "identify"]
    assert w.errors == []
    await context.close()


async def test_the_host_page_never_sees_an_error_when_the_gateway_is_down(sites: tuple[TrackingMesh, str, str],
                                                                          browser: Browser) -> None:
    """Every call still resolves (never rejects), failures are reported with console.warn only, and
    the events of the failed sends are kept and go with the next send once the gateway answers."""
    mesh, _gateway, site = sites
    context = await browser.new_context(user_agent=USER_AGENT)
    context.set_default_timeout(15_000)
    w = Watched(await context.new_page())
    warnings: list[str] = []
    w.page.on("console", lambda m: warnings.append(m.text) if m.type == "warning" else None)
    await w.page.route("**/t/v1/**", lambda route: route.abort())
    await w.open(f"{site}/")
    assert await w.page.evaluate("window.nurture.personalization()") is None
    who = await w.page.evaluate("window.nurture.identify({email: 'down@example.com'})")
    assert who["identified"] is False and who["error"]
    assert await w.page.evaluate("window.nurture.formFields()") == []
    assert await w.page.evaluate("window.nurture.track(42, null)") is None  # a bad call is no error either
    assert any(t.startswith("nurture: ") for t in warnings), warnings
    await w.page.unroute("**/t/v1/**")
    await w.page.evaluate("window.nurture.track('content_viewed', {topic: 'nursing'})")
    await until(lambda: visitor_events(mesh, w.page), 3)  # the page's two, kept through the failures, and this
    # Chromium itself logs each refused request ("Failed to load resource"); nothing else reached the page.
    assert w.errors and [e for e in w.errors if "Failed to load resource" not in e] == []
    await context.close()
