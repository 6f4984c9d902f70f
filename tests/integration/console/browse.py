"""Serving a console app on a real port for Chromium, and a signed-in watched page on it (the helpers of
test_browser.py: a JavaScript error or CSP violation fails the page's open, screenshots go to
test-artifacts/console/). Import it only from browser tests: it skips without Chromium or Playwright."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tests.helpers.serving import served
from tests.integration.console import test_browser as tb


@asynccontextmanager
async def browsing(app: FastAPI, key: str) -> AsyncIterator[tuple[str, tb.Watched]]:
    """The app served, a browser signed in with `key`, and its watched page."""
    async with served(app) as base, tb.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=tb.CHROMIUM, headless=True,
                                          args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 900})
            context.set_default_timeout(10_000)
            w = tb.Watched(await context.new_page())
            await w.page.goto(f"{base}/console/sign-in")
            await w.page.fill("input[name=api_key]", key)
            await w.page.click("form.sign-in button[type=submit]")
            await w.page.wait_for_url(f"{base}/console/journeys")
            # The journeys page may be a 503 where a test runs no journeys service: not this test's page.
            w.errors.clear()
            yield base, w
        finally:
            await browser.close()
