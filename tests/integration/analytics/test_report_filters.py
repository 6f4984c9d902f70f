"""A report's filters over the real journeys, scoring and analytics services and the gateway: a journey,
segment or mailbox provider that names nothing there is was answered 200 with zeros; it is a typo the
caller is told about (422 naming it), while every name that exists, or existed, still reads."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator

import httpx
import pytest

from nurture.settings import Settings
from tests.integration.console.conftest import KEYS
from tests.integration.console.mesh import console_mesh

pytestmark = pytest.mark.anyio
ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with console_mesh(settings, with_scoring=True, analytics_history=[]) as mesh:
        mesh.client.headers.update(ADMIN)
        yield mesh.client


def _refused(got: httpx.Response, field: str) -> str:
    assert got.status_code == 422, got.text
    error = got.json()["error"]
    assert error["code"] == "invalid" and field in error["details"]["fields"], error
    return str(error["details"]["fields"][field])


async def test_an_unknown_provider_journey_or_segment_is_a_422(client: httpx.AsyncClient) -> None:
    why = _refused(await client.get("/v1/analytics/deliverability", params={"provider": "bogus"}), "provider")
    assert why == "must be one of gmail, yahoo, microsoft, apple, other"
    for provider in ("gmail", "other"):
        assert (await client.get("/v1/analytics/deliverability", params={"provider": provider})).status_code == 200
    _refused(await client.get("/v1/analytics/engagement", params={"journey": "familly"}), "journey")
    _refused(await client.get("/v1/analytics/roi", params={"segment": "famly"}), "segment")
    both = await client.get("/v1/analytics/engagement", params={"journey": "nope", "segment": "nope"})
    assert set(both.json()["error"]["details"]["fields"]) == {"journey", "segment"}, both.text
    # What exists reads, and `segment=` (empty) is still the leads without one.
    for params in ({"journey": "family", "segment": "family"}, {"segment": ""}):
        got = await client.get("/v1/analytics/engagement", params=params)
        assert got.status_code == 200, got.text


async def test_archived_journeys_and_every_model_versions_segments_stay_valid(client: httpx.AsyncClient) -> None:
    archived = await client.post("/v1/journeys/family/archive")
    assert archived.status_code == 200, archived.text
    got = await client.get("/v1/analytics/engagement", params={"journey": "family"})
    assert got.status_code == 200, got.text
    # A segment added as data, in a draft version: valid at once (the kept list is looked up again).
    _refused(await client.get("/v1/analytics/engagement", params={"segment": "retiree"}), "segment")
    live = (await client.get("/v1/scoring/model")).json()["definition"]
    draft = copy.deepcopy(live)
    draft["segments"] = [{**draft["segments"][0], "segment": "retiree"}, *draft["segments"][1:]]
    stored = await client.put("/v1/scoring/model", json=draft)
    assert stored.status_code == 201, stored.text
    got = await client.get("/v1/analytics/engagement", params={"segment": "retiree"})
    assert got.status_code == 200, got.text
    # Published, the new version drops a segment: history recorded under it still reads by it.
    published = await client.post("/v1/scoring/model/publish", json={"version": stored.json()["version"]})
    assert published.status_code == 200, published.text
    dropped = live["segments"][0]["segment"]
    model = (await client.get("/v1/scoring/model")).json()["definition"]
    assert dropped not in {s["segment"] for s in model["segments"]}
    got = await client.get("/v1/analytics/engagement", params={"segment": dropped})
    assert got.status_code == 200, got.text
