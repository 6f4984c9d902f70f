"""Editing in the console: a journey draft (validated by the journeys service as the editor types, every
problem listed; saved; diffed against the published version; a dry-run publish with migration) and the
scoring model (draft with every problem listed, saved, dry-run publish). Viewers may not."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator

import httpx
import pytest
import yaml
from fastapi import FastAPI

from nurture.settings import Settings
from tests.integration.console.conftest import KEYS, csrf_of, sign_in
from tests.integration.console.mesh import console_mesh

pytestmark = pytest.mark.anyio


@pytest.fixture
async def journeys_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with console_mesh(settings) as mesh:
        yield mesh.client


def textarea(page: str) -> str:
    found = re.search(r'<textarea id="document"[^>]*>(.*?)</textarea>', page, re.S)
    assert found
    return html.unescape(found.group(1))


async def test_journey_draft_validate_save_diff_and_dry_run(journeys_client: httpx.AsyncClient) -> None:
    client = journeys_client
    await sign_in(client, KEYS["viewer"])
    assert (await client.get("/console/journeys/family/edit")).status_code == 403
    client.cookies.clear()
    await sign_in(client, KEYS["editor"])
    editor = await client.get("/console/journeys/family/edit")
    assert editor.status_code == 200
    token, document = csrf_of(editor.text), yaml.safe_load(textarea(editor.text))
    assert document["key"] == "family"

    broken = {**document, "steps": [{"id": "loop", "type": "jump", "to": "loop"}, *document["steps"]]}
    r = await client.post("/console/journeys/family/validate", data={"csrf": token, "document": yaml.safe_dump(broken)})
    problems = r.json()["problems"]
    assert r.status_code == 200 and r.json()["valid"] is False
    assert any("loop without a wait" in p for p in problems) and any("unreachable" in p for p in problems)
    r = await client.post("/console/journeys/family/validate", data={"csrf": token, "document": "steps: [unclosed"})
    assert r.json()["problems"][0].startswith("not valid YAML")
    r = await client.post("/console/journeys/family/validate", data={"document": yaml.safe_dump(document)})
    assert r.status_code == 403  # no CSRF token

    changed = yaml.safe_load(yaml.safe_dump(document))
    wait = next(s for s in changed["steps"] if s["id"] == "wait_02")
    wait["delay"] = "2d"
    r = await client.post("/console/journeys/family/edit",
                          data={"csrf": token, "document": yaml.safe_dump(changed, sort_keys=False), "action": "save"})
    assert r.status_code == 200, r.text
    saved = re.search(r'data-saved="(\d+)"', r.text)
    assert saved and saved.group(1) == "2"
    diff = html.unescape(re.search(r'<pre class="diff" id="diff">(.*?)</pre>', r.text, re.S).group(1))  # type: ignore[union-attr]
    changes = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("---", "+++")]
    assert len(changes) == 2 and "delay: 1d" in changes[0] and "delay: 2d" in changes[1], diff
    # Stored, not live: the journey still runs version 1.
    api = await client.get("/v1/journeys/family", headers={"Authorization": f"Bearer {KEYS['viewer']}"})
    assert api.json()["published_version"] == 1 and api.json()["latest_version"] == 2
    r = await client.post("/console/journeys/family/publish",
                          data={"csrf": token, "version": "2", "migrate": "on", "dry_run": "on"})
    assert r.status_code == 200 and "not published (dry run)" in r.text and "would_move" in r.text
    api = await client.get("/v1/journeys/family", headers={"Authorization": f"Bearer {KEYS['viewer']}"})
    assert api.json()["published_version"] == 1


async def test_scoring_model_draft_and_dry_run(console: tuple[httpx.AsyncClient, FastAPI]) -> None:
    client, _ = console
    await sign_in(client, KEYS["viewer"])
    page = await client.get("/console/scoring")
    assert page.status_code == 200 and 'data-rule="pricing_page"' in page.text and "<textarea" not in page.text
    r = await client.post("/console/scoring", data={"csrf": csrf_of(page.text), "document": "name: x"})
    assert r.status_code == 403
    client.cookies.clear()
    await sign_in(client, KEYS["editor"])
    page = await client.get("/console/scoring")
    token, model = csrf_of(page.text), yaml.safe_load(textarea(page.text))
    bad = yaml.safe_load(yaml.safe_dump(model))
    bad["behaviour"][0]["points"] = "lots"
    bad["behaviour"][1]["when"] = {"fact": "event.type", "between": [1, 2]}
    r = await client.post("/console/scoring", data={"csrf": token, "document": yaml.safe_dump(bad)})
    assert r.status_code == 422
    listed = re.findall(r"<li>(.*?)</li>", r.text.split('id="problems"', 1)[1].split("</ul>", 1)[0])
    assert len(listed) >= 2, listed  # every problem, not the first one
    # As the editor types: the same problems as JSON, nothing stored; a viewer may not ask.
    assert 'data-validate="/console/scoring/validate"' in page.text
    r = await client.post("/console/scoring/validate", data={"csrf": token, "document": yaml.safe_dump(bad)})
    assert r.status_code == 200 and not r.json()["valid"] and r.json()["problems"] == [html.unescape(p) for p in listed]
    r = await client.post("/console/scoring/validate", data={"csrf": token, "document": "behaviour: [unclosed"})
    assert r.status_code == 200 and not r.json()["valid"] and r.json()["problems"]
    good = yaml.safe_load(yaml.safe_dump(model))
    good["behaviour"][0]["points"] = int(good["behaviour"][0]["points"]) + 1
    r = await client.post("/console/scoring/validate", data={"csrf": token, "document": yaml.safe_dump(good)})
    assert r.status_code == 200 and r.json() == {"valid": True, "problems": [], "graph": None}
    versions = (await client.get("/v1/scoring/model", headers={"Authorization": f"Bearer {KEYS['viewer']}"})
                ).json()["versions"]
    assert len(versions) == 1   # validating stored nothing
    r = await client.post("/console/scoring", data={"csrf": token, "document": yaml.safe_dump(good)})
    saved = re.search(r'data-saved="(\d+)"', r.text)
    assert r.status_code == 200 and saved is not None
    r = await client.post("/console/scoring/publish", data={"csrf": token, "version": saved.group(1), "dry_run": "on"})
    assert r.status_code == 200 and "not published (dry run)" in r.text and 'class="publish-now"' in r.text
    live = await client.get("/v1/scoring/model", headers={"Authorization": f"Bearer {KEYS['viewer']}"})
    assert live.json()["version"] != int(saved.group(1))
