"""Input that breaks a limit (nurture.limits, docs/INPUT-LIMITS.md) gets a clear 4xx and stores
nothing; what is already stored and cannot be shown degrades to a placeholder instead of failing the
read; keys, tokens, 503s and 409s give nothing away. Against a real scoring service over gRPC (the
other services point at closed ports)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import create_app
from nurture.limits import UNREADABLE_KEY
from nurture.service import Running
from nurture.settings import SERVICES, Settings
from tests.conftest import free_port, mesh_channel, start_service

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": "Bearer test-key"}


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI, Running]]:
    scoring = await start_service("scoring", settings)
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    addrs["scoring_addr"] = scoring.address
    app = create_app(settings.with_overrides(api_key="test-key", **addrs))
    for s in SERVICES:
        app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))
    # A server answers an exception 500; the ASGI transport would raise it instead: same failure.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw", headers=AUTH) as client:
        yield client, app, scoring
    await scoring.stop(grace=0.2)


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


async def assert_lists_fine(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/leads")
    assert r.status_code == 200, r.text


async def test_deeply_nested_bodies_are_refused_and_nothing_is_stored(api) -> None:
    client, _app, _ = api
    r = await client.post("/v1/leads", content=b"[" * 300_000)
    assert r.status_code in (400, 413, 422) and r.json()["error"]["code"] in ("invalid", "malformed", "too_large")
    r = await client.post("/v1/leads", content=b"{" * 200_000)
    assert 400 <= r.status_code < 500, r.text
    for depth in (40, 300, 900):
        r = await client.post("/v1/leads", content=f'{{"id": "deep", "attributes": {{"x": {nested(depth)}}}}}')
        assert r.status_code == 422, r.text
        assert "nests deeper than 32" in r.json()["error"]["message"]
    assert (await client.get("/v1/leads/deep")).status_code == 404
    assert (await client.post("/v1/leads", json={"id": "d-1"})).status_code == 201
    r = await client.post("/v1/events", content=f'{{"lead_id": "d-1", "type": "page_viewed", '
                                               f'"properties": {{"x": {nested(300)}}}}}')
    assert r.status_code == 422, r.text
    r = await client.patch("/v1/leads/d-1", content=f'{{"attributes": {{"x": {nested(300)}}}}}')
    assert r.status_code == 422, r.text
    r = await client.get("/v1/leads/d-1/timeline")
    assert r.status_code == 200 and not [i for i in r.json()["items"] if i["type"] == "page_viewed"]
    assert (await client.get("/v1/leads/d-1")).json()["attributes"] == {}
    await assert_lists_fine(client)


@pytest.mark.parametrize("body", [
    '{"id": "s-1", "first_name": "\\ud800"}',
    '{"id": "s-1", "attributes": {"x": "a\\udc00b"}}',
    '{"id": "s-1", "attributes": {"\\ud83d": 1}}',
    '{"id": "s-1", "attributes": {"x": ["ok", {"y": "\\udfff"}]}}',
    '{"id": "s-1", "last_name": "nul\\u0000byte"}',
])
async def test_lone_surrogates_and_nul_in_a_lead_are_refused(api, body: str) -> None:
    client, _app, _ = api
    r = await client.post("/v1/leads", content=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid" and r.json()["error"]["details"]["fields"]
    assert (await client.get("/v1/leads/s-1")).status_code == 404
    await assert_lists_fine(client)


async def test_lone_surrogates_in_event_properties_are_refused(api) -> None:
    client, _app, _ = api
    assert (await client.post("/v1/leads", json={"id": "e-1"})).status_code == 201
    r = await client.post("/v1/events", content='{"lead_id": "e-1", "type": "page_viewed", '
                                                '"properties": {"page": "\\ud800"}}')
    assert r.status_code == 422 and "properties.page" in r.json()["error"]["details"]["fields"], r.text
    r = await client.get("/v1/leads/e-1/timeline")
    assert r.status_code == 200 and not [i for i in r.json()["items"] if i["type"] == "page_viewed"]


async def test_numbers_past_the_proto_field_are_refused(api) -> None:
    client, _app, _ = api
    for url in ("/v1/leads?min_score=99999999999", "/v1/leads?min_score=-99999999999",
                "/v1/journeys/x?version=99999999999", "/v1/leads?limit=99999999999",
                "/v1/leads/x/timeline?limit=4294967296"):
        r = await client.get(url)
        assert r.status_code == 422, (url, r.text)
    for version in (2**31, 2**63, -1, 1.5, "3"):
        r = await client.post("/v1/journeys/x/publish", json={"version": version})
        assert r.status_code == 422 and "version" in r.json()["error"]["details"]["fields"], (version, r.text)
    r = await client.post("/v1/leads", content='{"id": "n-1", "attributes": {"big": 1152921504606846976}}')
    assert r.status_code == 422 and "attributes.big" in r.json()["error"]["details"]["fields"], r.text
    r = await client.post("/v1/leads", content='{"id": "n-1", "attributes": {"big": 1e400}}')
    assert r.status_code == 422, r.text


async def test_times_at_the_edge_of_the_calendar_are_refused(api) -> None:
    client, _app, _ = api
    assert (await client.post("/v1/leads", json={"id": "t-1"})).status_code == 201
    for when in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00Z"):
        r = await client.post("/v1/events", json={"lead_id": "t-1", "type": "page_viewed", "occurred_at": when})
        assert r.status_code == 422 and "occurred_at" in r.json()["error"]["details"]["fields"], (when, r.text)
        r = await client.post("/v1/events", json={"lead_id": "t-1", "type": "webinar_registered",
                                                  "properties": {"starts_at": when}})
        assert r.status_code == 422, (when, r.text)
    r = await client.get("/v1/journeys/x/analytics", params={"from": "0001-01-01T00:00:00+14:00"})
    assert r.status_code == 422, r.text
    timeline = (await client.get("/v1/leads/t-1/timeline")).json()["items"]
    assert not [i for i in timeline if i["type"] in ("page_viewed", "webinar_registered")]


async def test_a_batch_takes_the_good_events_and_lists_the_bad(api) -> None:
    client, _app, _ = api
    assert (await client.post("/v1/leads", json={"id": "b-1"})).status_code == 201
    good = '{"lead_id": "b-1", "type": "page_viewed", "properties": {"category": "pricing"}}'
    bad = ['{"lead_id": "b-1", "type": "page_viewed", "properties": {"x": "\\ud800"}}',
           f'{{"lead_id": "b-1", "type": "page_viewed", "properties": {{"x": {nested(100)}}}}}',
           '{"lead_id": "b-1", "type": "page_viewed", "occurred_at": "0001-01-01T00:00:00+14:00"}',
           '{"lead_id": "b-1", "type": "page_viewed", "properties": {"n": -9007199254740993}}']
    r = await client.post("/v1/events:batch", content='{"events": [' + ", ".join([good, *bad, good]) + "]}")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 2
    assert [x["index"] for x in body["rejected"]] == [1, 2, 3, 4]
    json.dumps(body, ensure_ascii=False).encode("utf-8")  # the answer itself is valid text
    timeline = (await client.get("/v1/leads/b-1/timeline")).json()["items"]
    assert len([i for i in timeline if i["type"] == "page_viewed"]) == 2


async def test_stored_values_that_cannot_be_shown_degrade_instead_of_failing_reads(api, settings) -> None:
    client, _app, _ = api
    for lead in ("r-1", "r-2", "r-3"):
        assert (await client.post("/v1/leads", json={"id": lead, "attributes": {"ok": 1}})).status_code == 201
    r = await client.post("/v1/events", json={"lead_id": "r-1", "type": "page_viewed", "properties": {"p": 1}})
    assert r.status_code == 202
    # Rows as a bug (or an older version) left them: a lone surrogate as JSON escapes, nesting past
    # what a serialiser takes, NaN, text that is not JSON at all.
    engine = sa.create_engine(settings.database_url_for("scoring"))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE scoring_leads SET attributes = :v WHERE id = 'r-1'"),
                     {"v": '{"name": "\\ud800"}'})
        conn.execute(sa.text("UPDATE scoring_leads SET attributes = :v, consent = :c WHERE id = 'r-2'"),
                     {"v": '{"x": ' + nested(600) + "}", "c": '{"email": NaN}'})
        conn.execute(sa.text("UPDATE scoring_leads SET attributes = :v WHERE id = 'r-3'"), {"v": "{not json"})
        conn.execute(sa.text("UPDATE scoring_events SET properties = :v WHERE lead_id = 'r-1'"),
                     {"v": '{"page": "\\udc00", "deep": ' + nested(300) + "}"})
    engine.dispose()
    for lead in ("r-1", "r-2", "r-3"):
        r = await client.get(f"/v1/leads/{lead}")
        assert r.status_code == 200, (lead, r.text)
        assert UNREADABLE_KEY in r.json()["attributes"], r.text
    r = await client.get("/v1/leads")
    assert r.status_code == 200 and len(r.json()["items"]) == 3, r.text
    r = await client.get("/v1/leads/r-1/timeline")
    assert r.status_code == 200, r.text
    event = next(i for i in r.json()["items"] if i["type"] == "page_viewed")
    assert UNREADABLE_KEY in event["details"]["properties"]
    # Rewriting the attributes repairs the lead.
    r = await client.post("/v1/leads", json={"id": "r-1", "attributes": {"name": "Ana"}})
    assert r.status_code == 200 and r.json()["attributes"] == {"name": "Ana"}, r.text


async def test_keys_are_compared_safely_and_the_scheme_is_case_insensitive(api) -> None:
    client, _app, _ = api
    for value in ("Bearer t\xe9st-key", "Bearer \xff\xfe", "B\xe9arer test-key", "Bearer ", "test-key"):
        r = await client.get("/v1/leads", headers={"Authorization": value.encode("latin-1")})
        assert r.status_code == 401, (value, r.text)
    r = await client.post("/v1/events", headers={"Authorization": "Bearer t\xe9st".encode("latin-1")},
                          json={"lead_id": "x", "type": "page_viewed"})
    assert r.status_code == 401, r.text
    for scheme in ("bearer", "BEARER", "Bearer", "bEaReR"):
        r = await client.get("/v1/leads", headers={"Authorization": f"{scheme} test-key"})
        assert r.status_code == 200, (scheme, r.text)


async def test_a_503_does_not_tell_internal_addresses(api) -> None:
    client, app, _ = api
    r = await client.get("/v1/journeys")
    assert r.status_code == 503 and r.headers["Retry-After"], r.text
    journeys_addr = app.state.mesh.settings.address_of("journeys")
    assert "127.0.0.1" not in r.text and journeys_addr.rsplit(":", 1)[1] not in r.text, r.text


async def test_link_tokens_stay_out_of_traces(api, spans: InMemorySpanExporter) -> None:
    client, _app, _ = api
    spans.clear()
    secret = "eyJrIjoibyJ9.c2VjcmV0LXNpZ25hdHVyZQ"
    for url in (f"/t/o/{secret}", f"/t/c/{secret}", f"/u/{secret}"):
        await client.get(url)
    await client.post(f"/u/{secret}", data={"List-Unsubscribe": "One-Click"})
    finished = spans.get_finished_spans()
    assert finished
    for span in finished:
        assert secret not in span.name and secret not in json.dumps(dict(span.attributes or {})), span.name
    targets = {(s.attributes or {}).get("http.target") for s in finished}
    assert {"/t/o/{token}", "/t/c/{token}", "/u/{token}"} <= targets


async def test_a_url_with_a_nul_is_malformed(api) -> None:
    client, _app, _ = api
    for url in ("/v1/leads/a%00b", "/v1/leads?email=a%00b", "/v1/leads/a%00b/timeline"):
        r = await client.get(url)
        assert r.status_code == 400 and r.json()["error"]["code"] == "malformed", (url, r.text)


async def test_a_405_says_what_is_allowed(api) -> None:
    client, _app, _ = api
    r = await client.put("/v1/leads")
    assert r.status_code == 405 and set(r.headers["Allow"].split(", ")) == {"GET", "POST"}, r.headers
    r = await client.post("/v1/journeys/x")
    assert r.status_code == 405 and set(r.headers["Allow"].split(", ")) == {"GET", "PUT"}, r.headers
    assert r.json()["error"]["code"] == "method_not_allowed"
