"""The journey editor's live graph of the draft and its simulation side by side, over the real journeys
service: the validation answer carries the draft's graph (its steps and edges, none while it has
problems); a stored draft and the published version run over the same synthetic leads and the page shows
both funnels with the figures POST /v1/simulations gives each; viewers and bad input are refused. In
Chromium the draft's graph is redrawn as the text changes, and the simulation page draws both funnels."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
import yaml

from nurture.settings import Settings
from tests.integration.console.conftest import KEYS, csrf_of, sign_in
from tests.integration.console.mesh import ConsoleMesh, console_mesh
from tests.integration.console.test_analytics_page import cells
from tests.integration.console.test_editing import textarea

pytestmark = pytest.mark.anyio
API = {"Authorization": f"Bearer {KEYS['editor']}"}


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[ConsoleMesh]:
    async with console_mesh(settings) as running:
        yield running


async def _draft(client: httpx.AsyncClient) -> tuple[str, dict[str, object]]:
    editor = await client.get("/console/journeys/family/edit")
    assert editor.status_code == 200, editor.text
    return csrf_of(editor.text), yaml.safe_load(textarea(editor.text))


async def test_validation_answers_the_drafts_graph(mesh: ConsoleMesh) -> None:
    client = mesh.client
    await sign_in(client, KEYS["editor"])
    editor = await client.get("/console/journeys/family/edit")
    token, document = csrf_of(editor.text), yaml.safe_load(textarea(editor.text))
    steps = [s["id"] for s in document["steps"]]  # type: ignore[index]
    # The page draws the draft from the start: a box per step.
    assert re.findall(r'<div class="node type-\w+" data-step="([^"]+)"', editor.text) == steps
    validate = "/console/journeys/family/validate"
    r = await client.post(validate, data={"csrf": token, "document": yaml.safe_dump(document)})
    drawn = r.json()["graph"]
    assert r.json()["valid"] and [n["id"] for n in drawn["nodes"]] == steps
    assert {(e["source"], e["target"]) for e in drawn["edges"]} >= {(steps[0], steps[1])}
    changed = yaml.safe_load(yaml.safe_dump(document))
    next(s for s in changed["steps"] if s["id"] == "wait_02")["delay"] = "5d"
    r = await client.post(validate, data={"csrf": token, "document": yaml.safe_dump(changed)})
    assert {n["id"]: n["label"] for n in r.json()["graph"]["nodes"]}["wait_02"] == "wait 5d"
    broken = {**document, "steps": [{"id": "loop", "type": "jump", "to": "loop"}, *document["steps"]]}  # type: ignore[list-item]
    r = await client.post(validate, data={"csrf": token, "document": yaml.safe_dump(broken)})
    assert r.json()["valid"] is False and r.json()["graph"] is None


async def test_a_draft_and_the_published_version_simulated_side_by_side(mesh: ConsoleMesh) -> None:
    client = mesh.client
    await sign_in(client, KEYS["editor"])
    token, document = await _draft(client)
    # The draft waits 90 days after the first email: within the 40 simulated days no second email.
    changed = yaml.safe_load(yaml.safe_dump(document))
    first, dropped = changed["steps"][0]["id"], "email_02"
    next(s for s in changed["steps"] if s["id"] == "wait_02")["delay"] = "90d"
    text = yaml.safe_dump(changed, sort_keys=False)
    saved = await client.post("/console/journeys/family/edit", data={"csrf": token, "action": "save", "document": text})
    assert 'data-saved="2"' in saved.text, re.findall(r'<ul id="problems"[^>]*>(.*?)</ul>', saved.text, re.S)
    form = {"csrf": token, "version": "2", "leads": "120", "days": "40", "seed": "7"}
    page = await client.post("/console/journeys/family/simulate", data=form)
    assert page.status_code == 200, page.text
    expected = {}
    for side, chosen in (("draft", {"key": "family", "version": 2}), ("published", "family")):
        r = await client.post("/v1/simulations", headers=API,
                              json={"journeys": [chosen], "leads": 120, "days": 40, "seed": 7})
        assert r.status_code == 200, r.text
        expected[side] = r.json()["journeys"]["family"]
    totals = {r[0].split()[0]: [int(x) for x in r[1:5]] for r in cells(page.text, "simulation-totals")}
    assert totals["version"] == [expected["draft"][k] for k in ("enrolled", "goals", "completed", "exited")]
    assert totals["published"] == [expected["published"][k] for k in ("enrolled", "goals", "completed", "exited")]
    rows = {r[0].split()[0]: [int(x) for x in r[1:]] for r in cells(page.text, "simulation")}
    for side, offset in (("draft", 0), ("published", 1)):
        for s in expected[side]["steps"]:
            assert rows[s["step"]][offset::2] == [s[k] for k in ("entered", "sent", "opened", "clicked", "converted",
                                                                 "exited")], (side, s)
    # The two differ where the draft differs: the second email ran only in the published version.
    assert f'data-step="{dropped}" data-only="published"' in page.text
    assert sum(s["sent"] for s in expected["draft"]["steps"]) < sum(s["sent"] for s in expected["published"]["steps"])
    assert rows[first][0] == rows[first][1] > 0  # the same leads entered the shared first step


async def test_simulation_refuses_viewers_and_bad_input(mesh: ConsoleMesh) -> None:
    client = mesh.client
    await sign_in(client, KEYS["editor"])
    token, _ = await _draft(client)
    for form, status in (({"version": "1", "leads": "0"}, 422), ({"version": "1", "leads": "x", "days": "900"}, 422),
                         ({"version": "abc"}, 422), ({"version": "99"}, 422)):
        got = await client.post("/console/journeys/family/simulate", data={"csrf": token, **form})
        assert got.status_code == status, (form, got.status_code, got.text[:300])
    assert (await client.post("/console/journeys/family/simulate", data={"version": "1"})).status_code == 403
    client.cookies.clear()
    await sign_in(client, KEYS["viewer"])
    viewer = csrf_of((await client.get("/console/leads")).text)
    refused = await client.post("/console/journeys/family/simulate", data={"csrf": viewer, "version": "1"})
    assert refused.status_code == 403 and "viewer" in refused.text


async def test_the_draft_graph_redraws_and_simulation_draws_in_a_browser(mesh: ConsoleMesh) -> None:
    from tests.integration.console.browse import browsing  # skips without Chromium or Playwright
    from tests.integration.console.test_browser import ARTIFACTS

    async with browsing(mesh.app, KEYS["editor"]) as (base, w):
        await w.open(f"{base}/console/journeys/family/edit", shot="edit-journey")
        assert await w.page.locator("#draft-graph.laid-out").count() == 1
        assert await w.page.locator("#draft-graph svg polyline.edge").count() > 0
        text = await w.page.input_value("#document")
        await w.page.fill("#document", text.replace("delay: 1d", "delay: 5d", 1))
        await w.page.wait_for_selector('#draft-graph [data-step="wait_02"] .step-label:text("wait 5d")')
        assert await w.page.get_attribute("#draft-graph-state", "data-state") == "drawn"
        await w.page.fill("#document", "key: family\nsteps: [{id: loop, type: jump, to: loop}]\n")
        await w.page.wait_for_selector('#draft-graph-state[data-state="stale"]')
        # The last valid draft stays drawn.
        assert await w.page.locator('#draft-graph [data-step="wait_02"]').count() == 1
        await w.page.click("#simulate-form button[type=submit]")
        await w.page.wait_for_url(re.compile(r".*/simulate$"))
        await w.page.wait_for_load_state("load")
        for side in ("draft", "published"):
            labels = await w.page.evaluate(
                f"() => Chart.getChart(document.getElementById('funnel-{side}')).data.labels.length")
            assert labels > 0
        assert await w.page.locator("#simulation tbody tr[data-step]").count() > 0
        await w.page.screenshot(path=str(ARTIFACTS / "simulation.png"), full_page=True)
        assert w.errors == []
