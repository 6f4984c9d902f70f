"""The console's journey pages show an archived journey as archived, and an editor archives and brings one
back from its page (a viewer may not). Over the real journeys service."""

from __future__ import annotations

import httpx
import pytest

from nurture.settings import Settings
from tests.integration.console.conftest import KEYS, csrf_of, sign_in
from tests.integration.console.mesh import console_mesh

pytestmark = pytest.mark.anyio


def _row(listing: str, key: str) -> str:
    start = listing.index(f'<tr data-journey="{key}">')
    return listing[start:listing.index("</tr>", start)]


async def test_archive_and_bring_back_from_the_journey_page(settings: Settings) -> None:
    async with console_mesh(settings) as mesh:
        client: httpx.AsyncClient = mesh.client
        await sign_in(client, KEYS["viewer"])
        page = await client.get("/console/journeys/family")
        assert page.status_code == 200 and 'id="archive-form"' not in page.text   # the form is for editors
        r = await client.post("/console/journeys/family/archive", data={"csrf": csrf_of(page.text)})
        assert r.status_code == 403
        client.cookies.clear()

        await sign_in(client, KEYS["editor"])
        page = await client.get("/console/journeys/family")
        assert 'id="archive-form"' in page.text and 'id="archived"' not in page.text
        r = await client.post("/console/journeys/family/archive", data={"csrf": csrf_of(page.text), "archived": "true"})
        assert r.status_code in (302, 303), r.text
        page = await client.get("/console/journeys/family")
        assert page.status_code == 200 and 'id="archived"' in page.text and "Bring back" in page.text
        assert "<td>archived</td>" in _row((await client.get("/console/journeys")).text, "family")
        api = await client.get("/v1/journeys/family", headers={"Authorization": f"Bearer {KEYS['viewer']}"})
        assert api.json()["status"] == "archived"

        r = await client.post("/console/journeys/family/archive",
                              data={"csrf": csrf_of(page.text), "archived": "false"})
        assert r.status_code in (302, 303), r.text
        page = await client.get("/console/journeys/family")
        assert 'id="archived"' not in page.text
        assert "<td>published</td>" in _row((await client.get("/console/journeys")).text, "family")
