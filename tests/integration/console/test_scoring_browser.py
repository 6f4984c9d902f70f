"""The console's scoring page in a real browser (Chromium via Playwright, as test_browser.py): an editor
opens the model, edits it and sees the scoring service's validation as they type, saves a draft and
publishes it in a dry run. Screenshots go to test-artifacts/console/ (scoring_*.png)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from tests.integration.console import test_browser as tb
from tests.integration.console.browse import browsing
from tests.integration.console.conftest import KEYS

pytestmark = pytest.mark.anyio


async def _shot(w: tb.Watched, name: str) -> None:
    tb.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await w.page.screenshot(path=str(tb.ARTIFACTS / f"{name}.png"), full_page=True)


async def test_an_editor_edits_the_scoring_model_with_live_validation(
        console: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, app = console
    r = await client.post("/v1/leads", headers={"Authorization": f"Bearer {KEYS['editor']}"},
                          json={"id": "ana", "email": "ana@example.com", "attributes": {"profession": "nurse"}})
    assert r.status_code == 201, r.text
    async with browsing(app, KEYS["editor"]) as (base, w):
        await w.open(f"{base}/console/scoring", shot="scoring_open")
        page = w.page
        assert "Scoring model" in await page.locator("h1").inner_text()
        assert await page.locator('#rules tr[data-rule="pricing_page"]').count() == 1
        area = page.locator("#document")
        original = await area.input_value()
        assert "pricing_page" in original

        # A broken edit: the service's problems are listed as the editor types, nothing is stored.
        await area.fill(original.replace("points: 8\n", "points: lots\n", 1))
        await page.locator("#problems li").first.wait_for()
        problems = await page.locator("#problems li").all_inner_texts()
        assert any("points" in p for p in problems), problems
        assert await page.locator("#valid").is_hidden()
        await _shot(w, "scoring_problems")

        # Fixed: the problems go, "No problem found." shows; saving stores the next draft.
        await area.fill(original.replace("points: 8\n", "points: 9\n", 1))
        await page.locator("#valid", has_text="No problem found.").wait_for()
        assert await page.locator("#problems li").count() == 0
        await page.click("form.editor button[type=submit]")
        await page.locator("[data-saved]").wait_for()
        saved = await page.locator("[data-saved]").inner_text()
        assert int(saved) > 0
        assert "points: 9" in await page.locator("#diff").inner_text()
        await _shot(w, "scoring_saved")

        # A dry run of the draft: what it would change, read as figures (not the reply's JSON), nothing
        # published; then the real publish from there.
        assert await page.locator("form.publish-draft select[name=version]").input_value() == saved
        await page.click("form.publish-draft button[type=submit]")
        await page.locator("h1", has_text="not published (dry run)").wait_for()
        figures = await page.eval_on_selector_all(
            "[data-figure]", "els => Object.fromEntries(els.map(e => [e.dataset.figure, e.textContent]))")
        assert figures == {"leads": "1", "grade_changes": "0", "stage_changes": "0"}
        assert "{" not in await page.locator("main").inner_text()
        await _shot(w, "scoring_dry_run")
        await page.click("form.publish-now button[type=submit]")
        await page.locator("h1", has_text=f"version {saved} published").wait_for()
        await w.open(f"{base}/console/scoring", shot="scoring_published")
        assert f"live version {saved}" in await page.locator("h1").inner_text()
        assert await page.locator('#rules tr[data-rule="pricing_page"] td.n').inner_text() == "9"
        assert w.errors == []
