"""The console in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright, against
the gateway served by uvicorn over the small mesh of mesh.py. Signs in, opens every page, fails on any
JavaScript error (a CSP violation is one), checks what a person sees and saves screenshots of the main
pages under test-artifacts/console/ (gitignored).

Skipped, saying how to enable them, where Chromium or Playwright is missing: `apt-get install -y chromium`
(CI's .ci/run does it) and `make setup` (Playwright is a dev dependency). Playwright's own browser
download is never used: the browser is the system's."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nurture.settings import Settings
from tests.helpers.serving import served as served_app
from tests.integration.console.conftest import KEYS
from tests.integration.console.mesh import console_mesh

CHROMIUM = os.environ.get("NURTURE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "console"

try:
    from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright
except ImportError:  # pragma: no cover - depends on the machine
    pytest.skip("browser tests need Playwright: run `make setup` (it is a dev dependency)", allow_module_level=True)
if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
    pytest.skip(f"browser tests need Chromium at {CHROMIUM}: `apt-get install -y chromium` "
                "(or set NURTURE_CHROMIUM to a Chromium binary) to run them", allow_module_level=True)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """The console's mesh with the gateway on a real port (the browser needs one)."""
    async with console_mesh(settings, with_scoring=True) as mesh, served_app(mesh.app) as base:
        yield base, mesh.client


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield launched
        await launched.close()


class Watched:
    """A page whose JavaScript errors (console errors, uncaught exceptions) are collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    async def open(self, url: str, shot: str | None = None) -> None:
        response = await self.page.goto(url)
        assert response is not None and response.status == 200, (url, response and response.status)
        await self.page.wait_for_load_state("load")
        if shot:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await self.page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        assert self.errors == [], (url, self.errors)


async def sign_in(w: Watched, base: str, key: str) -> None:
    await w.open(f"{base}/console/journeys")  # sends to the sign-in form
    assert "/console/sign-in" in w.page.url
    await w.page.fill("input[name=api_key]", key)
    await w.page.click("form.sign-in button[type=submit]")
    await w.page.wait_for_url(f"{base}/console/journeys")


async def test_console_in_a_browser(served: tuple[str, httpx.AsyncClient], browser: Browser) -> None:
    base, api = served
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(10_000)  # a page of ours answers in far less; fail fast, not after 30 s
    w = Watched(await context.new_page())
    await sign_in(w, base, KEYS["viewer"])
    await w.open(f"{base}/console/journeys", shot="journeys")
    assert await w.page.locator('tr[data-journey="family"]').count() == 1

    # The journey graph: laid out by dagre (every step placed, edges drawn), each step's count the API's.
    await w.open(f"{base}/console/journeys/family", shot="journey")
    report = (await api.get("/v1/journeys/family/analytics", headers={"Authorization": f"Bearer {KEYS['viewer']}"}
                            )).json()
    shown: dict[str, Any] = await w.page.eval_on_selector_all(
        "[data-step]", "els => Object.fromEntries(els.map(e => [e.dataset.step, Number(e.dataset.entered)]))")
    expected = {s["step"]: s["entered"] for s in report["steps"]}
    assert {k: v for k, v in shown.items() if v} == {k: v for k, v in expected.items() if v} != {}
    assert await w.page.locator("#graph.laid-out").count() == 1
    assert await w.page.locator("#graph svg polyline.edge").count() >= len(shown) - 3
    boxes = [await w.page.locator(f'[data-step="{s}"]').bounding_box() for s in list(shown)[:4]]
    assert len({(round(b["x"]), round(b["y"])) for b in boxes if b}) == 4  # placed apart, not stacked
    # What a person reads on the first email's box is the API's number.
    first = report["steps"][0]
    text = await w.page.locator(f'[data-step="{first["step"]}"] [data-measure="entered"]').inner_text()
    assert text.split() == ["entered", str(first["entered"])]

    # A lead: the timeline with its reasons, the score chart drawn, what the lead supplied shown as text.
    await w.open(f"{base}/console/leads?journey=family", shot="leads")
    assert await w.page.locator('tr[data-lead="f-0"]').count() == 1
    await w.open(f"{base}/console/leads?email=f-5%40example.com")
    await w.page.click('tr[data-lead="f-5"] a')
    await w.page.wait_for_url(re.compile(r".*/console/leads/f-5$"))
    await w.open(w.page.url, shot="lead")
    kinds = await w.page.eval_on_selector_all("#timeline [data-kind]", "els => els.map(e => e.dataset.kind)")
    assert "journey" in kinds
    exit_item = w.page.locator('#timeline [data-kind="journey"][data-type="exited"]', has_text="exited family")
    assert await exit_item.count() == 1
    assert "unsubscribed" in await exit_item.locator(".reason").inner_text()
    assert await w.page.locator("h1").inner_text() != "" and "<b>Ana</b>" in await w.page.locator("h1").inner_text()

    await w.open(f"{base}/console/operations", shot="operations")
    assert await w.page.locator('[data-service="journeys"][data-status="SERVING"]').count() == 1

    # A viewer is refused a publish, even with a form of its own making (the session's CSRF token).
    token = await w.page.locator("form.sign-out input[name=csrf]").get_attribute("value")
    refused = await context.request.post(f"{base}/console/journeys/family/publish",
                                         form={"version": "1", "csrf": token or ""})
    assert refused.status == 403 and "viewer" in await refused.text()
    api_refused = await context.request.post(f"{base}/v1/journeys/family/publish", data=json.dumps({"version": 1}),
                                             headers={"Authorization": f"Bearer {KEYS['viewer']}"})
    assert api_refused.status == 403
    assert w.errors == []
    await context.close()

    # An editor edits a draft: problems are listed as they type (the service's own validation).
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(10_000)
    w = Watched(await context.new_page())
    await sign_in(w, base, KEYS["editor"])
    await w.open(f"{base}/console/scoring", shot="scoring")
    await w.open(f"{base}/console/journeys/family/edit")
    area = w.page.locator("#document")
    await area.fill((await area.input_value()).replace("steps:\n", "steps:\n- {id: loop, type: jump, to: loop}\n", 1))
    await w.page.locator("#problems li", has_text="unreachable").first.wait_for()
    assert await w.page.locator("#problems li", has_text="loop without a wait").count() == 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await w.page.screenshot(path=str(ARTIFACTS / "edit_journey.png"), full_page=False)
    assert w.errors == []
    await context.close()
