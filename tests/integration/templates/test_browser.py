"""The templates' console pages in a real browser (headless Chromium through Playwright, as
tests/integration/console/test_browser.py), over real scoring, messaging and journeys services: edit the
source with live problems and a live preview, insert a personalization field, save a draft, see the phone
preview, publish, and the next send (to the aiosmtpd sink) uses the new version. Any JavaScript error or
CSP violation (Chromium reports them as console errors) fails the test."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nurture.settings import Settings
from tests.integration.console.conftest import KEYS
from tests.integration.templates.mesh import TemplatesMesh, templates_mesh

CHROMIUM = os.environ.get("NURTURE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "console"

try:
    from playwright.async_api import Browser, ConsoleMessage, Frame, Page, async_playwright
except ImportError:  # pragma: no cover - depends on the machine
    pytest.skip("browser tests need Playwright: run `make setup` (it is a dev dependency)", allow_module_level=True)
if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
    pytest.skip(f"browser tests need Chromium at {CHROMIUM}: `apt-get install -y chromium`",
                allow_module_level=True)

from tests.integration.console import browse  # noqa: E402 - after the skips: it needs Playwright too

pytestmark = pytest.mark.anyio
KEY = "family.email_01"


@pytest.fixture
async def served(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[str, TemplatesMesh]]:
    async with templates_mesh(settings, tmp_path) as mesh, browse.served(mesh.app) as base:
        yield base, mesh


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield launched
        await launched.close()


def watch(page: Page, errors: list[str]) -> None:
    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning") and ("Content Security Policy" in message.text
                                                     or message.type == "error"):
            errors.append(f"console: {message.text}")
    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))


async def frame_text(page: Page, name: str, wanted: str) -> Frame:
    """The named iframe once its document shows `wanted` (the live preview loads after a validation)."""
    for _ in range(200):
        frame = page.frame(name=name)
        if frame is not None:
            try:
                if wanted in await frame.inner_text("body"):
                    return frame
            except Exception:   # navigating: its document is being replaced
                pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} never showed {wanted!r}")


async def test_edit_validate_preview_publish_and_the_next_send_uses_it(
        served: tuple[str, TemplatesMesh], browser: Browser) -> None:
    base, mesh = served
    await mesh.add_lead("ana")
    errors: list[str] = []
    context = await browser.new_context(viewport={"width": 1500, "height": 1000})
    context.set_default_timeout(15_000)
    page = await context.new_page()
    watch(page, errors)
    await page.goto(f"{base}/console/sign-in?next=/console/templates")
    await page.fill("input[name=api_key]", KEYS["editor"])
    await page.click("form.sign-in button[type=submit]")
    await page.wait_for_url(f"{base}/console/templates")
    assert await page.locator(f'tr[data-template="{KEY}"]').count() == 1

    # The template's page: versions, the journeys that use it, previews at both widths (sample lead).
    await page.goto(f"{base}/console/templates/{KEY}")
    assert await page.locator('[data-used-by="family"]').count() == 1
    assert await page.locator('#versions tr[data-version="1"][data-status="published"]').count() == 1
    assert "Hi Ana," in await (await frame_text(page, "preview-phone", "Hi Ana,")).inner_text("body")
    phone = await page.locator("#preview-phone").bounding_box()
    assert phone is not None and 370 <= phone["width"] <= 380

    # The editor: a problem listed as you type, then fixed; a field inserted; the live phone preview.
    await page.goto(f"{base}/console/templates/{KEY}/edit")
    # The A/B variants are authored here, with the live variants' report figures beside them.
    assert await page.locator('#ab-figures tr[data-variant="b"]').count() == 1
    await page.fill("#f-subject", "Hello {{ shoe_size }}")
    await page.locator("#problems li", has_text="unknown variable 'shoe_size'").wait_for()
    await page.fill("#f-subject", "Fresh from the browser, ")
    await page.focus("#f-subject")
    await page.press("#f-subject", "End")
    await page.click('#variables button[data-insert="{{ first_name }}"]')
    assert await page.input_value("#f-subject") == "Fresh from the browser, {{ first_name }}"
    body = await page.input_value("#f-body")
    await page.fill("#f-body", body.replace("Warm regards,", "Kind regards from the browser,"))
    await page.fill("#f-variants", "{}")
    await page.locator("#valid:not([hidden])").wait_for()
    assert await page.locator("#problems li").count() == 0
    live = await frame_text(page, "live-phone", "Kind regards from the browser,")
    assert "Hi Ana," in await live.inner_text("body")
    box = await page.locator("#live-phone").bounding_box()
    assert box is not None and 370 <= box["width"] <= 380
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "template-editor.png"), full_page=True)

    # Save a draft, publish it.
    await page.click("#save-draft")
    await page.locator("[data-saved='2']").wait_for()
    # The stored page previews the draft at both widths, the phone's once the desktop's loaded: a frame
    # navigating under a confirm dialog closes it, so the dialogs below wait for both previews.
    await frame_text(page, "live-phone", "Kind regards from the browser,")
    # Publishing changes what the next send uses at once: the browser asks first, and "Cancel" publishes
    # nothing (Playwright dismisses a dialog it is not told to accept).
    asked: list[str] = []
    page.once("dialog", lambda d: (asked.append(d.message), asyncio.ensure_future(d.dismiss())))
    await page.click("#publish-saved")
    await page.wait_for_timeout(300)
    assert asked and "version 2" in asked[0] and "next send" in asked[0], asked
    assert await page.locator("#notice").count() == 0 and "/edit" in page.url
    page.once("dialog", lambda d: asyncio.ensure_future(d.accept()))
    await page.click("#publish-saved")
    await page.locator("#notice", has_text="Version 2 is published").wait_for()
    assert await page.locator('#versions tr[data-version="2"][data-status="published"]').count() == 1
    await page.screenshot(path=str(ARTIFACTS / "template.png"), full_page=True)
    assert errors == []

    # The next send uses version 2, and records it.
    message_id = await mesh.send("ana", KEY)
    (mail,) = [m for m in mesh.mails() if m["X-Nurture-Message"] == message_id]
    assert str(mail["Subject"]) == "Fresh from the browser, Ana"
    assert "Kind regards from the browser," in mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    (row,) = (await mesh.client.get("/v1/leads/ana/messages", headers=mesh.headers("viewer"))).json()["items"]
    assert row["template_version"] == 2


async def test_the_block_editor_edits_a_block_and_saves_a_draft(served: tuple[str, TemplatesMesh],
                                                                 browser: Browser) -> None:
    base, mesh = served
    errors: list[str] = []
    context = await browser.new_context(viewport={"width": 1500, "height": 1000})
    context.set_default_timeout(20_000)
    page = await context.new_page()
    watch(page, errors)
    await page.goto(f"{base}/console/sign-in?next=/console/templates/{KEY}/blocks")
    await page.fill("input[name=api_key]", KEYS["editor"])
    await page.click("form.sign-in button[type=submit]")
    await page.wait_for_url(f"{base}/console/templates/{KEY}/blocks")
    canvas = page.frame_locator("#blocks-editor iframe.gjs-frame")
    block = canvas.locator("p", has_text="Warm regards,").first
    await block.wait_for()
    # Edit a block in the canvas: double-click opens its rich-text editing, then type at its start.
    await block.dblclick()
    await page.keyboard.press("Control+Home")
    await page.keyboard.type("Edited in blocks. ")
    await canvas.locator("p", has_text="Edited in blocks.").first.wait_for()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "template-blocks.png"), full_page=True)
    await page.click("#save-blocks")
    await page.wait_for_url(f"{base}/console/templates/{KEY}/edit")
    problems = await page.locator("#problems li").all_inner_texts()
    assert problems == [], problems
    await page.locator("[data-saved='2']").wait_for()
    stored = (await mesh.client.get(f"/v1/templates/{KEY}?version=2", headers=mesh.headers("viewer"))).json()
    assert "Edited in blocks. Warm regards," in stored["body"] and stored["status"] == "draft"
    assert errors == [], errors


async def test_the_editors_live_preview_shows_the_unsaved_text_at_both_widths(
        served: tuple[str, TemplatesMesh], browser: Browser) -> None:
    """docs/API.md, Console: "a live preview of the unsaved text at both widths". The editor refreshed both
    by submitting its form twice in a row, and a form's second submission cancels the first before it
    starts: the desktop preview stayed blank on opening and after every edit."""
    base, mesh = served
    await mesh.add_lead("ana")
    errors: list[str] = []
    context = await browser.new_context(viewport={"width": 1500, "height": 1000})
    context.set_default_timeout(15_000)
    page = await context.new_page()
    watch(page, errors)
    await page.goto(f"{base}/console/sign-in?next=/console/templates/{KEY}/edit")
    await page.fill("input[name=api_key]", KEYS["editor"])
    await page.click("form.sign-in button[type=submit]")
    await page.wait_for_url(f"{base}/console/templates/{KEY}/edit")
    for name in ("live-desktop", "live-phone"):      # on opening: the version as it is
        await frame_text(page, name, "Warm regards,")
    body = await page.input_value("#f-body")
    await page.fill("#f-body", body.replace("Warm regards,", "Edited, not saved,"))
    for name in ("live-desktop", "live-phone"):      # after an edit: the unsaved text, at both widths
        await frame_text(page, name, "Edited, not saved,")
    box = await page.locator("#live-desktop").bounding_box()
    assert box is not None and box["width"] > 380
    assert errors == [], errors
