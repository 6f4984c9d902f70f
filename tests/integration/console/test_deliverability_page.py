"""Deliverability beside the analytics dashboard, over the real analytics service fed a generated history
whose emails carry messaging's labels (sending domain, provider, bounce kind) with soft bounces and
complaints: each table shows the rows /v1/analytics/deliverability answers for the same filters, each
downloads as the API's CSV, bad choices are refused, and in Chromium the charts have a bar group per row."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from nurture.settings import Settings
from tests.integration.analytics import history as h
from tests.integration.console.conftest import KEYS, console_over_analytics
from tests.integration.console.test_analytics_page import SPAN, cells

pytestmark = pytest.mark.anyio
API = {"Authorization": f"Bearer {KEYS['viewer']}"}
PROVIDERS = ("gmail", "yahoo", "microsoft", "other")
DOMAINS = ("news.borderbridge.example", "borderbridge.example")


def _labelled(stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history's emails as messaging labels them with the guards on, and a soft bounce or a
    complaint after some sends."""
    out: list[dict[str, Any]] = []
    for n, m in enumerate(stream):
        if m["type"] not in ("email_sent", "email_hard_bounced"):
            out.append(m)
            continue
        mid = str(m["properties"].get("message_id") or "")
        where = {"provider": PROVIDERS[sum(map(ord, mid)) % len(PROVIDERS)], "sending_domain": DOMAINS[n % 2]}
        props = {**m["properties"], **where}
        if m["type"] == "email_hard_bounced":
            props["bounce"] = "hard"
        out.append({**m, "properties": props})
        if m["type"] == "email_sent" and n % 5 in (1, 2):
            kind = "email_soft_bounced" if n % 5 == 1 else "spam_reported"
            out.append({**m, "id": f"{m['id']}:{kind}", "type": kind, "properties": props})
    return out


@pytest.fixture
async def labelled(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with console_over_analytics(settings, _labelled(h.generate(12, leads=25))) as client:
        yield client


async def test_the_page_shows_the_api_figures(labelled: httpx.AsyncClient) -> None:
    for params in ({}, {"interval": "week", "segment": "family"}, {"provider": "gmail"},
                   {"domain": DOMAINS[0], "journey": "welcome"}):
        page = await labelled.get("/console/analytics/deliverability", params={**SPAN, **params})
        assert page.status_code == 200, page.text
        api = (await labelled.get("/v1/analytics/deliverability", params={**SPAN, **params}, headers=API)).json()
        for table, key in (("points", "t"), ("by_provider", "provider"), ("by_domain", "domain")):
            shown = [(r[0], *map(int, r[1:6])) for r in cells(page.text, table) if len(r) > 1]
            assert shown == [(str(r[key]), r["sent"], r["delivered"], r["hard_bounced"], r["soft_bounced"],
                              r["complaints"]) for r in api[table]], (params, table)
        assert f'data-total="sent">{api["totals"]["sent"]}<' in page.text
    whole = (await labelled.get("/v1/analytics/deliverability", params=SPAN, headers=API)).json()
    totals = whole["totals"]
    assert totals["sent"] and totals["hard_bounced"] and totals["soft_bounced"] and totals["complaints"]
    assert {r["provider"] for r in whole["by_provider"]} == set(PROVIDERS)


async def test_each_table_downloads_as_the_api_csv(labelled: httpx.AsyncClient) -> None:
    for table in ("points", "by_provider", "by_domain"):
        got = await labelled.get("/console/analytics/deliverability.csv", params={**SPAN, "table": table})
        assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv"), got.text
        assert got.headers["content-disposition"] == 'attachment; filename="deliverability.csv"'
        expected = await labelled.get("/v1/analytics/deliverability", params={**SPAN, "table": table, "format": "csv"},
                                     headers=API)
        assert got.text == expected.text and got.text.count("\r\n") > 1


async def test_bad_choices_are_refused(labelled: httpx.AsyncClient) -> None:
    for params in ({"interval": "hour"}, {"from": "yesterday"}):
        got = await labelled.get("/console/analytics/deliverability", params=params)
        assert got.status_code == 422, (params, got.status_code)
    assert (await labelled.get("/console/analytics/deliverability.csv", params={"table": "x"})).status_code == 422


async def test_deliverability_charts_in_a_browser(labelled: httpx.AsyncClient) -> None:
    from tests.integration.console.browse import browsing  # skips without Chromium or Playwright

    async with browsing(labelled.app, KEYS["viewer"]) as (base, w):  # type: ignore[attr-defined]
        query = "&".join(f"{k}={v}" for k, v in SPAN.items())
        await w.open(f"{base}/console/analytics?{query}")
        await w.page.click("#deliverability-link")
        await w.page.wait_for_load_state("load")
        await w.open(w.page.url, shot="deliverability")
        for chart, table, row in (("deliverability-chart", "points", "t"), ("provider-chart", "by_provider", "group"),
                                  ("domain-chart", "by_domain", "group")):
            bars = await w.page.evaluate(
                f"() => {{ const c = Chart.getChart(document.getElementById('{chart}'));"
                " return c ? c.data.labels.length : -1; }")
            rows = await w.page.locator(f"#{table} tbody tr[data-{row}]").count()
            assert bars == rows > 0, (chart, bars, rows)
        assert w.errors == []
