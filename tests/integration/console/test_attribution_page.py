"""Attribution and ROI beside the analytics dashboard, over the real analytics service fed a generated
history with won deals: each table shows the rows /v1/analytics/attribution and /roi answer for the same
filters (and the recount of tests/integration/analytics/history.py gives), each downloads as the API's
CSV, bad choices are refused, and in Chromium both charts are drawn with a bar per table row."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.analytics import history as h
from tests.integration.console.conftest import KEYS
from tests.integration.console.test_analytics_page import SPAN, cells, dashboard  # noqa: F401  (a fixture)

pytestmark = pytest.mark.anyio
API = {"Authorization": f"Bearer {KEYS['viewer']}"}
Dashboard = tuple[httpx.AsyncClient, list[dict[str, Any]]]


async def test_attribution_and_roi_show_the_api_figures(dashboard: Dashboard) -> None:  # noqa: F811
    client, stream = dashboard
    for model, table, dim in (("linear", "by_topic", "topic"), ("first", "by_template", "template"),
                              ("last", "by_format", "format")):
        params = {**SPAN, "model": model, "table": table, "window_days": "30"}
        page = await client.get("/console/analytics/attribution", params=params)
        assert page.status_code == 200, page.text
        api = (await client.get("/v1/analytics/attribution", params=params, headers=API)).json()
        assert api[table], "the history has credited wins"
        shown = cells(page.text, "attribution")
        assert [(r[0], float(r[-2]), float(r[-1])) for r in shown] == \
            [(str(r[dim]), float(r["conversions"]), float(r["revenue"])) for r in api[table]]
        assert f'data-total="conversions">{api["conversions"]}<' in page.text
    days = sorted({h.at_of(m).date() for m in stream})
    recount = h.attribution(stream, h.Range(days[0], days[-1]), "linear", 30)
    linear = (await client.get("/v1/analytics/attribution", params={**SPAN, "model": "linear"}, headers=API)).json()
    assert linear["conversions"] == recount["conversions"] > 0
    roi = (await client.get("/v1/analytics/roi", params=SPAN, headers=API)).json()
    page = await client.get("/console/analytics/attribution", params=SPAN)
    assert roi["by_journey"] and [(r[0], int(r[1]), float(r[2]), float(r[4])) for r in cells(page.text, "roi")] == \
        [(r["journey"], r["nurtured_leads"], r["cost"], r["influenced_revenue"]) for r in roi["by_journey"]]
    assert f'data-total="nurtured_leads">{roi["nurtured_leads"]}<' in page.text


async def test_attribution_and_roi_download_as_the_api_csv(dashboard: Dashboard) -> None:  # noqa: F811
    client, _ = dashboard
    for path, params, source in (
            ("attribution.csv", {"model": "linear", "table": "by_topic", "window_days": "14"},
             "/v1/analytics/attribution"),
            ("roi.csv", {}, "/v1/analytics/roi")):
        got = await client.get(f"/console/analytics/{path}", params={**SPAN, **params})
        assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv"), got.text
        assert got.headers["content-disposition"] == f'attachment; filename="{path}"'
        expected = await client.get(source, params={**SPAN, **params, "format": "csv"}, headers=API)
        assert got.text == expected.text and got.text.count("\r\n") > 1


async def test_bad_choices_are_refused(dashboard: Dashboard) -> None:  # noqa: F811
    client, _ = dashboard
    for params in ({"model": "everyone"}, {"table": "by_colour"}, {"window_days": "0"}, {"window_days": "x"},
                   {"from": "yesterday"}):
        got = await client.get("/console/analytics/attribution", params=params)
        assert got.status_code == 422, (params, got.status_code)
    assert (await client.get("/console/analytics/attribution.csv", params={"model": "x"})).status_code == 422


async def test_attribution_charts_in_a_browser(dashboard: Dashboard) -> None:  # noqa: F811
    from tests.integration.console.browse import browsing  # skips without Chromium or Playwright

    client, _ = dashboard
    async with browsing(client.app, KEYS["viewer"]) as (base, w):  # type: ignore[attr-defined]
        query = "&".join(f"{k}={v}" for k, v in SPAN.items())
        await w.open(f"{base}/console/analytics?{query}")
        await w.page.click("#attribution-link")
        await w.page.wait_for_load_state("load")
        await w.open(w.page.url + "&model=linear&table=by_topic", shot="attribution")
        for chart, table in (("attribution-chart", "attribution"), ("roi-chart", "roi")):
            bars = await w.page.evaluate(
                f"() => {{ const c = Chart.getChart(document.getElementById('{chart}'));"
                " return c ? c.data.labels.length : -1; }")
            rows = await w.page.locator(f"#{table} tbody tr[data-{'group' if table == 'attribution' else 'journey'}]"
                                        ).count()
            assert bars == rows > 0, (chart, bars, rows)
        assert await w.page.locator("select[name=model] option[selected]").inner_text() == "linear touch"
        assert w.errors == []
