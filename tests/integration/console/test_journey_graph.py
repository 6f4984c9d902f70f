"""The journey page's graph against the API and a recount: leads run through real journeys (the journeys
service over gRPC, messaging's contract played by the recording fake), then every step's count on the
page equals `/v1/journeys/{key}/analytics` and a count of the journeys service's own step-run records."""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import create_engine, select

from nurture.settings import Settings
from services.journeys.storage import StepRunRow
from tests.integration.console.conftest import KEYS, csrf_of, sign_in
from tests.integration.console.mesh import console_mesh

pytestmark = pytest.mark.anyio
STEP = re.compile(r'data-step="([^"]+)" data-entered="(\d+)"')


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    async with console_mesh(settings) as mesh:
        yield mesh.client, mesh.settings


def recount(settings: Settings, journey: str) -> dict[str, int]:
    """Step runs straight from the journeys service's records: what ran, not what a report says."""
    engine = create_engine(settings.database_url_for("journeys"))
    try:
        with engine.connect() as db:
            rows = db.execute(select(StepRunRow.step, StepRunRow.status).where(StepRunRow.journey == journey))
            return dict(Counter(step for step, status in rows if status != "deferred"))
    finally:
        engine.dispose()


async def test_graph_counts_equal_the_api_and_a_recount(running: tuple[httpx.AsyncClient, Settings]) -> None:
    client, settings = running
    await sign_in(client, KEYS["viewer"])
    page = await client.get("/console/journeys/family")
    assert page.status_code == 200, page.text
    shown = {step: int(n) for step, n in STEP.findall(page.text)}
    api = (await client.get("/v1/journeys/family/analytics", headers={"Authorization": f"Bearer {KEYS['viewer']}"}))
    assert api.status_code == 200
    by_api = {s["step"]: s["entered"] for s in api.json()["steps"]}
    ran = recount(settings, "family")
    assert sum(ran.values()) > 6  # the walk went past the first step, so the comparison means something
    # Every step of the definition is drawn; the ones that ran show the API's count and the recount.
    assert set(by_api) <= set(shown)
    assert {s: n for s, n in shown.items() if n} == {s: n for s, n in by_api.items() if n} == ran
    # Opens and exits by reason as the API says them.
    opened = {s["step"]: s["opened"] for s in api.json()["steps"] if s["opened"]}
    assert sum(opened.values()) == 2
    for step, n in opened.items():
        block = page.text.split(f'data-step="{step}"', 1)[1].split('data-step="', 1)[0]
        assert (f'data-measure="opened" href="/console/journeys/family/leads?step={step}&amp;measure=opened">'
                f'opened <b>{n}</b>') in block
    for reason, n in api.json()["exit_reasons"].items():
        assert (f'data-reason="{reason}" href="/console/journeys/family/leads?measure=exited&amp;reason={reason}">'
                f'{reason} {n}<') in page.text
    # The journeys list shows the same enrolment as the report.
    listing = await client.get("/console/journeys")
    assert f'<td class="n" data-enrolled="{api.json()["enrolled"]}">' in listing.text


async def test_each_journeys_list_link_opens_what_its_label_says(settings: Settings) -> None:
    """The list's enrolled count (all-time: 6 families) linked to the leads in the journey now (5: one
    unsubscribed), so a marketer clicking "6" found 5 leads. Now the link says "in it now" and its page
    says what it lists; the exit count opens the leads that exited, as many as it says."""
    async with console_mesh(settings, with_scoring=True) as mesh:
        await _journeys_list_links(mesh.client)


async def _journeys_list_links(client: httpx.AsyncClient) -> None:
    await sign_in(client, KEYS["viewer"])
    headers = {"Authorization": f"Bearer {KEYS['viewer']}"}
    report = (await client.get("/v1/journeys/family/analytics", headers=headers)).json()
    live = (await client.get("/v1/journeys/family/members", headers=headers)).json()["items"]
    assert report["enrolled"] == 6 and len(live) == 5 and report["exited"] == 1
    listing = (await client.get("/console/journeys")).text
    row = listing.split('<tr data-journey="family">', 1)[1].split("</tr>", 1)[0]
    assert '<a href="/console/leads?journey=family" data-in-now>in it now</a>' in row
    assert not re.search(r'<a [^>]*>6</a>', row), "the enrolled count opens no listing of fewer leads"
    exits = re.search(r'<a href="([^"]+)" data-exited="1">1</a>', row)
    assert exits, row
    exited = await client.get(html.unescape(exits.group(1)))
    assert exited.status_code == 200 and sum(int(t) for t in re.findall(r'data-times="(\d+)"', exited.text)) == 1
    now = await client.get("/console/leads", params={"journey": "family"})
    assert sorted(re.findall(r'<tr data-lead="([^"]+)"', now.text)) == sorted(live)
    assert 'id="in-now"' in now.text and "now" in now.text


async def test_publish_from_the_console_by_role(running: tuple[httpx.AsyncClient, Settings]) -> None:
    client, _ = running
    await sign_in(client, KEYS["viewer"])
    page = await client.get("/console/journeys/webinar")
    assert 'id="publish-form"' not in page.text  # a viewer is not offered the form
    r = await client.post("/console/journeys/webinar/publish", data={"version": "1", "csrf": csrf_of(page.text)})
    assert r.status_code == 403
    client.cookies.clear()
    await sign_in(client, KEYS["editor"])
    page = await client.get("/console/journeys/webinar")
    assert 'id="publish-form"' in page.text
    r = await client.post("/console/journeys/webinar/publish",
                          data={"version": "1", "dry_run": "on", "csrf": csrf_of(page.text)})
    assert r.status_code == 200 and "not published (dry run)" in r.text


async def test_operations_page_shows_health_and_bus_backlog(running: tuple[httpx.AsyncClient, Settings]) -> None:
    client, _ = running
    await sign_in(client, KEYS["viewer"])
    page = await client.get("/console/operations")
    assert page.status_code == 200
    assert 'data-service="journeys" data-status="SERVING"' in page.text
    assert re.search(r'data-service="scoring" data-status="(?!SERVING")', page.text)  # not started here
    # The journeys service consumed everything published above: nothing waits, nothing is dead.
    row = re.search(r'<tr data-group="journeys">(.*?)</tr>', page.text, re.S)
    assert row is not None
    assert re.findall(r'<td class="n">(\d+)</td>', row.group(1)) == ["0", "0", "0"]


async def test_waiting_now_per_step_is_the_members_at_that_step(running: tuple[httpx.AsyncClient, Settings]) -> None:
    client, _ = running
    await sign_in(client, KEYS["viewer"])
    page = await client.get("/console/journeys/family")
    waiting = {s: int(n) for s, n in re.findall(r'data-step="([^"]+)" data-entered="\d+" data-waiting="(\d+)"',
                                                 page.text)}
    auth = {"Authorization": f"Bearer {KEYS['viewer']}"}
    live = (await client.get("/v1/journeys/family/members", headers=auth)).json()["items"]
    # Five families are still in (one unsubscribed), each at exactly one step.
    assert len(live) == 5 and sum(waiting.values()) == 5
    for step, n in waiting.items():
        if n:
            at = await client.get("/v1/journeys/family/members", params={"step": step}, headers=auth)
            assert len(at.json()["items"]) == n and set(at.json()["items"]) <= set(live)
