"""The console's analytics dashboard over the real analytics service and bus: every table shows the
rows the /v1/analytics report answers for the same filters (and a recount over the history gives), each
table downloads as the API's CSV, and a bad choice is refused."""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import httpx
import pytest

from nurture.settings import Settings
from tests.conftest import free_port
from tests.integration.analytics import history as h
from tests.integration.console.conftest import KEYS, console_over_analytics

pytestmark = pytest.mark.anyio
SPAN = {"from": "2026-01-01T00:00:00Z", "to": "2026-06-01T00:00:00Z"}


@pytest.fixture
async def dashboard(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, list[dict[str, Any]]]]:
    stream = h.generate(11, leads=25)
    async with console_over_analytics(settings, stream) as client:
        yield client, stream


def cells(page: str, table: str) -> list[list[str]]:
    body = re.search(rf'<table class="list" id="{table}">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert body, f"no table {table}"
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body.group(1), re.S)]


async def test_the_dashboard_shows_the_api_figures(dashboard: tuple[httpx.AsyncClient, list[dict[str, Any]]]) -> None:
    client, stream = dashboard
    api = {"Authorization": f"Bearer {KEYS['viewer']}"}
    page = await client.get("/console/analytics", params={**SPAN, "group_by": "template", "metric": "opened",
                                                          "interval": "week"})
    assert page.status_code == 200, page.text
    rows = (await client.get("/v1/analytics/engagement", params={**SPAN, "group_by": "template"}, headers=api)
            ).json()["rows"]
    assert rows, "the history reached the reports"
    shown = cells(page.text, "engagement")
    assert [(r[0], int(r[1]), int(r[3]), int(r[4])) for r in shown] == \
        [(r["group"], r["sent"], r["opened"], r["clicked"]) for r in rows]
    days = sorted({h.at_of(m).date() for m in stream})
    assert sum(int(r[1]) for r in shown) == sum(r["sent"] for r in h.engagement(stream, h.Range(days[0], days[-1]),
                                                                                "template"))
    points = (await client.get("/v1/analytics/timeseries", params={**SPAN, "metric": "opened", "interval": "week"},
                               headers=api)).json()["points"]
    shown_points = [(r[0], float(r[1])) for r in cells(page.text, "series")]
    # The API's points, and a 0 for each week between them it leaves out (test_an_empty_day_is_shown).
    assert points and [s for s in shown_points if s[1]] == [(p["t"], float(p["value"])) for p in points if p["value"]]
    assert 'id="series-chart"' in page.text and 'data-metric="opened"' in page.text
    stages = (await client.get("/v1/analytics/progression", params=SPAN, headers=api)).json()["stages"]
    assert stages and [(r[0], r[1], int(r[2]), int(r[3])) for r in cells(page.text, "stages")] == \
        [(s["journey"], s["stage"], s["entered"], s["advanced"]) for s in stages]


async def test_an_empty_day_is_shown_not_skipped(settings: Settings) -> None:
    """A day nothing was sent on is a 0 in the chart and its table: the API leaves such a day out, and the
    chart drew the days either side of it as neighbours, so a day without mail looked like none passed."""
    stream = h.generate(11, leads=25)
    sending = ("email_sent", "email_hard_bounced")  # what `sent` counts
    sent_days = sorted({h.at_of(m).date() for m in stream if m["type"] in sending})
    gap = sent_days[len(sent_days) // 2]
    stream = [m for m in stream if not (m["type"] in sending and h.at_of(m).date() == gap)]
    async with console_over_analytics(settings, stream) as client:
        params = {**SPAN, "metric": "sent", "interval": "day"}
        api = (await client.get("/v1/analytics/timeseries", params=params,
                                headers={"Authorization": f"Bearer {KEYS['viewer']}"})).json()["points"]
        assert gap.isoformat() not in {p["t"] for p in api}, "the API leaves the empty day out"
        page = await client.get("/console/analytics", params=params)
        shown = {r[0]: float(r[1]) for r in cells(page.text, "series")}
        first, last = date.fromisoformat(api[0]["t"]), date.fromisoformat(api[-1]["t"])
        every_day = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
        assert list(shown) == every_day and shown[gap.isoformat()] == 0
        assert {t: v for t, v in shown.items() if v} == {p["t"]: float(p["value"]) for p in api if p["value"]}
        drawn = json.loads(html.unescape(re.search(r'data-points="([^"]*)"', page.text).group(1)))  # type: ignore[union-attr]
        assert [p["t"] for p in drawn] == every_day


async def test_each_table_downloads_as_the_api_csv(dashboard: tuple[httpx.AsyncClient, list[dict[str, Any]]]
                                                  ) -> None:
    client, _ = dashboard
    api = {"Authorization": f"Bearer {KEYS['viewer']}"}
    for report, params, source in (
            ("engagement", {"group_by": "segment"}, ("/v1/analytics/engagement", {"group_by": "segment"})),
            ("timeseries", {"metric": "sent", "interval": "day"},
             ("/v1/analytics/timeseries", {"metric": "sent", "interval": "day"})),
            ("stages", {}, ("/v1/analytics/progression", {"table": "stages"}))):
        got = await client.get(f"/console/analytics/{report}.csv", params={**SPAN, **params})
        assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv"), got.text
        assert got.headers["content-disposition"] == f'attachment; filename="{report}.csv"'
        expected = await client.get(source[0], params={**SPAN, **source[1], "format": "csv"}, headers=api)
        assert got.text == expected.text and got.text.count("\r\n") > 1


async def test_a_bad_choice_is_refused_and_a_stranger_sent_to_sign_in(
        dashboard: tuple[httpx.AsyncClient, list[dict[str, Any]]]) -> None:
    client, _ = dashboard
    assert (await client.get("/console/analytics", params={"group_by": "colour"})).status_code == 422
    assert (await client.get("/console/analytics/nothing.csv")).status_code == 404
    client.cookies.clear()
    away = await client.get("/console/analytics")
    assert away.status_code in (302, 303) and "/console/sign-in" in away.headers["location"]


async def test_the_dashboard_draws_its_chart_in_a_browser(
        dashboard: tuple[httpx.AsyncClient, list[dict[str, Any]]]) -> None:
    import asyncio

    import uvicorn

    from tests.integration.console import test_browser as tb  # skips here too without Chromium or Playwright

    client, _ = dashboard
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(client.app, host="127.0.0.1", port=port,  # type: ignore[attr-defined]
                                           log_level="warning", lifespan="off", access_log=False))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    try:
        async with tb.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=tb.CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            context = await browser.new_context(viewport={"width": 1400, "height": 900})
            context.set_default_timeout(10_000)
            w = tb.Watched(await context.new_page())
            await tb.sign_in(w, base, KEYS["viewer"])
            # Signing in lands on the journeys page, whose service this test does not run (a 503 there).
            w.errors.clear()
            query = "&".join(f"{k}={v}" for k, v in SPAN.items())
            await w.open(f"{base}/console/analytics?{query}&metric=sent", shot="analytics")
            # Chart.js drew the series: the canvas has a chart bound to it with one bar per point.
            bars = await w.page.evaluate(
                "() => { const c = Chart.getChart(document.getElementById('series-chart'));"
                " return c ? c.data.datasets[0].data.length : -1; }")
            rows = await w.page.locator("#series tbody tr[data-t]").count()
            assert bars == rows > 0
            assert await w.page.locator("#engagement tbody tr[data-group]").count() > 0
            assert w.errors == []
            await browser.close()
    finally:
        server.should_exit = True
        await task
