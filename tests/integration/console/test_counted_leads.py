"""The leads behind a count on the journey graph: for every step and measure of the journey's analytics,
the listing (GET /v1/journeys/{key}/analytics/leads, page by page) holds exactly the records the count
is made of (its `times` add up to the count, and a recount of the journeys service's own tables finds
the same leads), also for exits by reason; the console's page shows the listing, and in Chromium a count
on the graph opens it. Bad requests are refused with every problem."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from nurture import times
from nurture.settings import Settings
from services.journeys.storage import EngagementRow, StepRunRow, TransitionRow
from tests.integration.console.conftest import KEYS, sign_in
from tests.integration.console.mesh import ConsoleMesh, console_mesh
from tests.integration.console.test_analytics_page import cells

pytestmark = pytest.mark.anyio
API = {"Authorization": f"Bearer {KEYS['viewer']}"}
MEASURES = ("entered", "sent", "suppressed", "opened", "clicked", "converted", "exited")


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[ConsoleMesh]:
    async with console_mesh(settings, with_scoring=True) as running:
        yield running


async def listing(client: httpx.AsyncClient, **params: str) -> tuple[Counter[str], dict[str, Any]]:
    """Every page of a count's leads (two a page, so paging is exercised), as lead -> times."""
    got: Counter[str] = Counter()
    cursor, first = "", None
    while True:
        r = await client.get("/v1/journeys/family/analytics/leads", params={**params, "limit": "2", "cursor": cursor},
                             headers=API)
        assert r.status_code == 200, r.text
        body = r.json()
        first = first or body
        for item in body["items"]:
            assert item["lead_id"] not in got  # a lead is on one page only
            got[item["lead_id"]] = item["times"]
        assert list(got) == sorted(got)
        if not body["next_cursor"]:
            return got, first
        cursor = body["next_cursor"]


def recount(settings: Settings) -> dict[tuple[str, str], Counter[str]]:
    """(step, measure) -> lead -> records, straight from the journeys service's tables."""
    engine = create_engine(settings.database_url_for("journeys"))
    out: dict[tuple[str, str], Counter[str]] = {}
    try:
        with engine.connect() as db:
            for step, status, lead in db.execute(select(StepRunRow.step, StepRunRow.status, StepRunRow.lead_id)
                                                 .where(StepRunRow.journey == "family")):
                if status != "deferred":
                    out.setdefault((step, "entered"), Counter())[lead] += 1
                if status in ("sent", "scheduled"):
                    out.setdefault((step, "sent"), Counter())[lead] += 1
            for step, kind, lead in db.execute(select(EngagementRow.step, EngagementRow.type, EngagementRow.lead_id)
                                               .where(EngagementRow.journey == "family")):
                measure = {"email_opened": "opened", "email_clicked": "clicked"}.get(kind)
                if measure:
                    out.setdefault((step, measure), Counter())[lead] += 1
            for step, lead in db.execute(select(TransitionRow.step_from, TransitionRow.lead_id).where(
                    TransitionRow.journey == "family", TransitionRow.type == "exited")):
                out.setdefault((step or "", "exited"), Counter())[lead] += 1
    finally:
        engine.dispose()
    return out


async def test_every_count_lists_the_leads_it_is_made_of(mesh: ConsoleMesh) -> None:
    client = mesh.client
    report = (await client.get("/v1/journeys/family/analytics", headers=API)).json()
    records = recount(mesh.settings)
    checked = 0
    for step in report["steps"]:
        for measure in MEASURES:
            got, first = await listing(client, step=step["step"], measure=measure)
            assert sum(got.values()) == step[measure] == first["total"], (step["step"], measure)
            assert first["leads_total"] == len(got)
            if measure in ("entered", "sent", "opened", "clicked", "exited"):
                assert got == records.get((step["step"], measure), Counter()), (step["step"], measure)
            checked += step[measure]
    assert checked > 20  # the walk went far enough for the comparison to mean something
    assert sum(n for (_, m), c in records.items() if m == "opened" for n in c.values()) == 2
    # Exits of the whole journey, and by reason: the unsubscribed family.
    for reason, n in report["exit_reasons"].items():
        got, _ = await listing(client, measure="exited", reason=reason)
        assert sum(got.values()) == n
    everyone, _ = await listing(client, measure="exited")
    assert sum(everyone.values()) == report["exited"] and "f-5" in everyone
    unsubscribed, _ = await listing(client, measure="exited", reason="unsubscribed")
    assert set(unsubscribed) == {"f-5"}


async def test_the_console_page_lists_a_count(mesh: ConsoleMesh) -> None:
    client = mesh.client
    await sign_in(client, KEYS["viewer"])
    graph = await client.get("/console/journeys/family")
    first = re.search(r'data-step="([^"]+)" data-entered="(\d+)"', graph.text)
    assert first and int(first.group(2)) == 6
    page = await client.get("/console/journeys/family/leads", params={"step": first.group(1), "measure": "entered"})
    assert page.status_code == 200, page.text
    assert 'data-total="6"' in page.text and 'data-leads="6"' in page.text
    shown = cells(page.text, "counted")
    assert [r[0] for r in shown] == [f"f-{i}" for i in range(6)] and all(r[-1] == "1" for r in shown)
    assert shown[0][1] == "f-0@example.com"  # the profile from scoring


async def test_bad_requests_are_refused(mesh: ConsoleMesh) -> None:
    client = mesh.client
    for params, fields in (({"measure": "liked", "step": "email_01"}, {"measure"}),
                           ({"measure": "entered"}, {"step"}),
                           ({"measure": "sent", "step": "email_01", "reason": "unsubscribed"}, {"reason"}),
                           ({"measure": "entered", "step": "email_01", "from": "2026-02-01T00:00:00Z",
                             "to": "2026-01-01T00:00:00Z"}, {"from"})):
        r = await client.get("/v1/journeys/family/analytics/leads", params=params, headers=API)
        assert r.status_code == 422, (params, r.text)
        assert set(r.json()["error"]["details"]["fields"]) == fields, r.json()
    r = await client.get("/v1/journeys/family/analytics/leads", params={"measure": "entered", "step": "email_01",
                                                                      "cursor": "made-up"}, headers=API)
    assert r.status_code == 422
    r = await client.get("/v1/journeys/nothing/analytics/leads", params={"measure": "exited"}, headers=API)
    assert r.status_code == 404
    assert (await client.get("/v1/journeys/family/analytics/leads", params={"measure": "exited"})).status_code == 401


async def test_a_count_on_the_graph_opens_its_leads_in_a_browser(mesh: ConsoleMesh) -> None:
    from tests.integration.console.browse import browsing  # skips without Chromium or Playwright

    report = (await mesh.client.get("/v1/journeys/family/analytics", headers=API)).json()
    opened = next(s for s in report["steps"] if s["opened"])
    async with browsing(mesh.app, KEYS["viewer"]) as (base, w):
        await w.open(f"{base}/console/journeys/family")
        await w.page.click(f'[data-step="{opened["step"]}"] a[data-measure="opened"]')
        await w.page.wait_for_load_state("load")
        await w.open(w.page.url, shot="counted-leads")
        total = await w.page.get_attribute("#counted-total [data-total]", "data-total")
        times = await w.page.eval_on_selector_all("#counted tbody tr[data-lead]",
                                                  "els => els.map(e => Number(e.dataset.times))")
        assert int(total or -1) == sum(times) == opened["opened"]
        await w.open(f"{base}/console/journeys/family")
        await w.page.click('a.exit-reason[data-reason="unsubscribed"]')
        await w.page.wait_for_load_state("load")
        assert await w.page.locator("#counted tbody tr[data-lead]").all_inner_texts() != []
        assert await w.page.locator('#counted tr[data-lead="f-5"]').count() == 1
        assert w.errors == []


async def test_the_funnel_from_the_step_counters_equals_a_record_by_record_recount(mesh: ConsoleMesh) -> None:
    """The journey's analytics are read from the step counters kept as the records are written
    (storage.step_counts); feeding every record of the same history one by one into the funnel gives
    the same report, stages included, over all time and over ranges that start and end inside a day
    (whole days from the counters, the part-days from the records); the console's counts without the
    stage table are the same numbers."""
    from sqlalchemy.orm import Session

    from services.journeys import storage
    from services.journeys.domain.definitions import load
    from services.journeys.domain.funnel import Funnel, feed

    client = mesh.client
    for key in ("family", "webinar"):
        api = (await client.get(f"/v1/journeys/{key}/analytics", headers=API)).json()
        document = (await client.get(f"/v1/journeys/{key}", headers=API)).json()["definition"]
        engine = create_engine(mesh.settings.database_url_for("journeys"))
        try:
            with Session(engine) as s:
                runs, transitions, engagements = storage.history(s, key, None, None)
        finally:
            engine.dispose()
        recount = feed(Funnel(), runs, transitions, engagements).report({key: load(document, version=1)})
        expected = recount.get(key) or {"enrolled": 0, "goals": 0, "completed": 0, "exited": 0,
                                        "exit_reasons": {}, "steps": [], "stages": []}
        assert {k: api[k] for k in expected} == expected
        if key == "family":
            assert api["enrolled"] == 6 and api["exited"] >= 1 and api["steps"] and api["stages"]
            # Ranges: from inside the first day to inside the last, and within one day.
            with Session(engine) as s:
                first, last = s.execute(select(func.min(StepRunRow.at), func.max(StepRunRow.at))
                                        .where(StepRunRow.journey == key)).one()
            first, last = times.utc(first), times.utc(last)
            assert last - first > timedelta(days=2), "the history spans whole days and part-days"
            midnight = first.replace(hour=0, minute=0, second=0, microsecond=0)
            for lo, hi in ((first + timedelta(minutes=1), last - timedelta(minutes=1)),
                           (first, first + timedelta(hours=5)), (first - timedelta(days=1), last + timedelta(days=1)),
                           (midnight, midnight + timedelta(days=2))):
                window = {"from": lo.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "to": hi.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
                r = await client.get(f"/v1/journeys/{key}/analytics", params=window, headers=API)
                assert r.status_code == 200, r.text
                with Session(engine) as s:
                    runs, transitions, engagements = storage.history(s, key, lo, hi)
                ranged = feed(Funnel(), runs, transitions, engagements).report({key: load(document, version=1)})
                assert runs and {k: r.json()[k] for k in ranged[key]} == ranged[key], window
        from gateway.routes import journeys as journeys_api
        counts = await journeys_api.journey_counts(key, mesh.app.state.mesh)
        assert {**counts, "stages": api["stages"]} == api
