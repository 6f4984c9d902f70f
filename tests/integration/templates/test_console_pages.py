"""The templates' console pages over HTTP: roles (a viewer reads, an editor edits and publishes), CSRF on
every form, and the preview document's own strict CSP (no script; framed by the console only)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nurture.settings import Settings
from tests.integration.console.conftest import KEYS, csrf_of, sign_in
from tests.integration.templates.mesh import TemplatesMesh, templates_mesh

pytestmark = pytest.mark.anyio
KEY = "webinar.email_01"


@pytest.fixture
async def mesh(settings: Settings, tmp_path: Path) -> AsyncIterator[TemplatesMesh]:
    async with templates_mesh(settings, tmp_path) as m:
        yield m


async def test_viewer_reads_and_cannot_edit_or_publish(mesh: TemplatesMesh) -> None:
    await sign_in(mesh.client, KEYS["viewer"])
    listing = await mesh.client.get("/console/templates")
    assert listing.status_code == 200 and f'data-template="{KEY}"' in listing.text
    page = await mesh.client.get(f"/console/templates/{KEY}")
    assert page.status_code == 200 and 'sandbox=""' in page.text and "edit-link" not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert (await mesh.client.get(f"/console/templates/{KEY}/edit")).status_code == 403
    assert (await mesh.client.get(f"/console/templates/{KEY}/blocks")).status_code == 403
    r = await mesh.client.post(f"/console/templates/{KEY}/publish", data={"csrf": csrf_of(page.text), "version": "1"})
    assert r.status_code == 403


async def test_the_preview_document_has_a_strict_csp_of_its_own(mesh: TemplatesMesh) -> None:
    await sign_in(mesh.client, KEYS["viewer"])
    r = await mesh.client.get(f"/console/templates/{KEY}/preview.html?version=1")
    assert r.status_code == 200 and "<mj-" not in r.text and "Hi Ana," in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "sandbox" in csp
    assert "frame-ancestors 'self'" in csp and r.headers["x-frame-options"] == "SAMEORIGIN"
    assert (await mesh.client.get(f"/console/templates/{KEY}/preview.html?version=x")).status_code == 422


async def test_editor_saves_drafts_with_csrf_and_problems_are_listed(mesh: TemplatesMesh) -> None:
    await sign_in(mesh.client, KEYS["editor"])
    form_page = await mesh.client.get(f"/console/templates/{KEY}/edit")
    assert form_page.status_code == 200 and 'data-insert="{{ first_name }}"' in form_page.text
    current = (await mesh.client.get(f"/v1/templates/{KEY}", headers=mesh.headers("viewer"))).json()
    fields = {"subject": "{{ nope }}", "preheader": current["preheader"], "body": current["body"],
              "text": current["text"], "variants": "{}", "action": "save"}
    assert (await mesh.client.post(f"/console/templates/{KEY}/edit", data=fields)).status_code == 403  # no CSRF
    fields["csrf"] = csrf_of(form_page.text)
    r = await mesh.client.post(f"/console/templates/{KEY}/edit", data=fields)
    assert r.status_code == 422 and "unknown variable &#39;nope&#39;" in r.text
    r = await mesh.client.post(f"/console/templates/{KEY}/validate", data={**fields, "variants": "[1]"})
    assert r.json() == {"valid": False, "problems": [
        'variants: must be a JSON object {"name": {"subject": ..., "weight": ...}}']}
    r = await mesh.client.post(f"/console/templates/{KEY}/edit", data={**fields, "subject": "New {{ first_name }}"})
    assert r.status_code == 200 and 'data-saved="2"' in r.text
    r = await mesh.client.post(f"/console/templates/{KEY}/publish", data={"csrf": fields["csrf"], "version": "2"})
    assert r.status_code == 200 and "Version 2 is published" in r.text
    blocks = await mesh.client.get(f"/console/templates/{KEY}/blocks")
    assert blocks.status_code == 200 and "style-src 'self' 'unsafe-inline'" in blocks.headers["content-security-policy"]
    assert "script-src 'self';" in blocks.headers["content-security-policy"]


async def test_the_editor_shows_a_versions_topic_and_format_and_a_draft_saved_there_keeps_them(
        mesh: TemplatesMesh) -> None:
    # A topic and format named through the API were dropped by the next draft saved in the console
    # (its form had no such fields): the editor holds them, as the block editor's form does.
    body = (await mesh.client.get(f"/v1/templates/{KEY}", headers=mesh.headers("viewer"))).json()
    body = {k: body[k] for k in ("subject", "preheader", "body", "text")}
    r = await mesh.client.put(f"/v1/templates/{KEY}", headers=mesh.headers("editor"),
                              json={**body, "topic": "webinar_followups", "format": "reminder"})
    assert r.status_code == 201 and r.json()["version"] == 2, r.text
    await sign_in(mesh.client, KEYS["editor"])
    form_page = await mesh.client.get(f"/console/templates/{KEY}/edit")
    topic = re.search(r'name="topic" id="f-topic" value="([^"]*)"', form_page.text)
    fmt = re.search(r'name="format" id="f-format" value="([^"]*)"', form_page.text)
    assert topic and fmt and (topic[1], fmt[1]) == ("webinar_followups", "reminder")
    blocks = await mesh.client.get(f"/console/templates/{KEY}/blocks")
    assert '<input type="hidden" name="topic" value="webinar_followups">' in blocks.text
    fields = {**body, "topic": topic[1], "format": fmt[1], "variants": "{}", "action": "save",
              "csrf": csrf_of(form_page.text)}
    r = await mesh.client.post(f"/console/templates/{KEY}/edit", data=fields)
    assert r.status_code == 200 and 'data-saved="3"' in r.text, r.text
    saved = (await mesh.client.get(f"/v1/templates/{KEY}?version=3", headers=mesh.headers("viewer"))).json()
    assert (saved["topic"], saved["format"]) == ("webinar_followups", "reminder")
    r = await mesh.client.post(f"/console/templates/{KEY}/edit", data={**fields, "format": "podcast"})
    assert r.status_code == 422 and "format: &#39;podcast&#39; is not one of" in r.text


async def test_the_editor_shows_and_edits_a_versions_button_label_and_page(mesh: TemplatesMesh) -> None:
    # The call to action's label and page were catalog.yaml's only: the editor holds them (and the block
    # editor's form carries them), so a draft saved in the console names them or keeps the API's.
    body = (await mesh.client.get(f"/v1/templates/{KEY}", headers=mesh.headers("viewer"))).json()
    body = {k: body[k] for k in ("subject", "preheader", "body", "text")}
    r = await mesh.client.put(f"/v1/templates/{KEY}", headers=mesh.headers("editor"),
                              json={**body, "cta_label": "Compare plans", "cta_path": "/plans"})
    assert r.status_code == 201 and r.json()["version"] == 2, r.text
    await sign_in(mesh.client, KEYS["editor"])
    form_page = await mesh.client.get(f"/console/templates/{KEY}/edit")
    label = re.search(r'name="cta_label" id="f-cta-label" value="([^"]*)"', form_page.text)
    path = re.search(r'name="cta_path" id="f-cta-path" value="([^"]*)"', form_page.text)
    assert label and path and (label[1], path[1]) == ("Compare plans", "/plans")
    blocks = await mesh.client.get(f"/console/templates/{KEY}/blocks")
    assert '<input type="hidden" name="cta_path" value="/plans">' in blocks.text
    fields = {**body, "cta_label": "See family plans", "cta_path": "/plans/family", "variants": "{}",
              "action": "save", "csrf": csrf_of(form_page.text)}
    r = await mesh.client.post(f"/console/templates/{KEY}/edit", data=fields)
    assert r.status_code == 200 and 'data-saved="3"' in r.text, r.text
    saved = (await mesh.client.get(f"/v1/templates/{KEY}?version=3", headers=mesh.headers("viewer"))).json()
    assert (saved["cta_label"], saved["cta_path"]) == ("See family plans", "/plans/family")
    r = await mesh.client.post(f"/console/templates/{KEY}/edit", data={**fields, "cta_path": "https://evil.example/"})
    assert r.status_code == 422 and "cta_path: " in r.text
