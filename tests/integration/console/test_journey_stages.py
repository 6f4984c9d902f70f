"""The journey page's stages table over the real analytics service: the same rows as the progression
report for `journey=<key>` (analytics' maintained aggregates), and a recount over the history gives them;
with analytics down, the page still draws the journey and says so."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import httpx
import pytest

from nurture.settings import Settings
from tests.integration.analytics import history as h
from tests.integration.console.conftest import KEYS, sign_in
from tests.integration.console.mesh import console_mesh

pytestmark = pytest.mark.anyio
SPAN = {"from": "2026-01-01T00:00:00Z", "to": "2026-06-01T00:00:00Z"}


@pytest.fixture
async def over_history(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, list[dict[str, Any]]]]:
    stream = h.generate(11, leads=25)
    async with console_mesh(settings, analytics_history=stream) as mesh:
        await sign_in(mesh.client, KEYS["viewer"])
        yield mesh.client, stream


def stage_cells(page: str) -> list[list[str]]:
    body = re.search(r'<table class="list" id="journey-stages">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert body, "no stages table"
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body.group(1), re.S)]


def dash(v: float | None) -> str:
    return "—" if v is None else str(v)


async def test_the_journey_page_stages_equal_the_progression_report(
        over_history: tuple[httpx.AsyncClient, list[dict[str, Any]]]) -> None:
    client, stream = over_history
    api = {"Authorization": f"Bearer {KEYS['viewer']}"}
    checked = 0
    for key in ("webinar",):  # the history's journey the playbook also has
        page = await client.get(f"/console/journeys/{key}", params=SPAN)
        assert page.status_code == 200, page.text
        rows = (await client.get("/v1/analytics/progression", params={**SPAN, "journey": key}, headers=api)
                ).json()["stages"]
        assert rows and all(r["journey"] == key for r in rows)
        shown = stage_cells(page.text)
        assert [(c[0], int(c[1]), int(c[2]), c[4], c[5]) for c in shown] == \
            [(r["stage"], r["entered"], r["advanced"], dash(r["median_hours"]), dash(r["p90_hours"])) for r in rows]
        assert [c[6].startswith("yes") for c in shown] == [r["bottleneck"] for r in rows]
        # And what the report says is a recount of the raw history (the journey's own stages, by entry day).
        recount = h.progression(stream, h.Range(date(2026, 1, 1), date(2026, 6, 1), journey=key))["stages"]
        assert [(c[0], int(c[1]), int(c[2])) for c in shown] == [(r["stage"], r["entered"], r["advanced"])
                                                                  for r in recount]
        assert f'href="/console/analytics/stages.csv?from={SPAN["from"].replace(":", "%3A")}' in page.text
        checked += sum(int(c[1]) for c in shown)
    assert checked > 0


async def test_the_stages_read_in_the_journey_order(settings: Settings) -> None:
    """The stages table lists the journey's stages as the journey runs them (registration, event,
    follow_up), not by name as the report does (event, follow_up, registration): a funnel read top down."""
    names = {"invite": "registration", "remind": "event", "followup": "follow_up"}  # the playbook's webinar
    stream = h.generate(11, leads=25)
    for m in stream:
        p = m["properties"]
        if p.get("journey") == "webinar" and p.get("stage") in names:
            p["stage"] = names[p["stage"]]
    async with console_mesh(settings, analytics_history=stream) as mesh:
        await sign_in(mesh.client, KEYS["viewer"])
        page = await mesh.client.get("/console/journeys/webinar", params=SPAN)
        assert page.status_code == 200, page.text
        api = (await mesh.client.get("/v1/analytics/progression", params={**SPAN, "journey": "webinar"},
                                     headers={"Authorization": f"Bearer {KEYS['viewer']}"})).json()["stages"]
        shown = [c[0] for c in stage_cells(page.text)]
        assert sorted(shown) == sorted(r["stage"] for r in api) and len(shown) == 3
        assert shown == ["registration", "event", "follow_up"]


async def test_the_journey_page_without_analytics_says_so(settings: Settings) -> None:
    async with console_mesh(settings) as mesh:
        await sign_in(mesh.client, KEYS["viewer"])
        page = await mesh.client.get("/console/journeys/family")
        assert page.status_code == 200, page.text
        assert 'id="stages-unavailable"' in page.text and 'id="graph"' in page.text
