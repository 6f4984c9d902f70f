"""The gateway's HTTP contract against a real scoring service over gRPC (other services: whatever
the tree has; the contract for leads and events needs only scoring)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI

from gateway.app import create_app
from nurture.service import Running
from nurture.settings import Settings
from tests.conftest import mesh_channel, start_service

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": "Bearer test-key"}


async def test_lead_lifecycle_and_events(api: tuple[httpx.AsyncClient, FastAPI, Running]) -> None:
    client, _app, _ = api
    r = await client.post(
        "/v1/leads",
        headers=AUTH,
        json={"id": "l-1", "email": "ana@example.com", "consent": {"email": True}, "timezone": "Asia/Kolkata"},
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/leads", headers=AUTH, json={"id": "l-1", "email": "ana@example.com", "first_name": "Ana"}
    )
    assert r.status_code == 200 and r.json()["first_name"] == "Ana"
    r = await client.patch("/v1/leads/l-1", headers=AUTH, json={"attributes": {"profession": "nurse"}})
    assert r.json()["attributes"] == {"profession": "nurse"} and r.json()["segment"] == "skilled_professional"
    r = await client.post(
        "/v1/events",
        headers=AUTH,
        json={
            "lead_id": "l-1",
            "type": "page_viewed",
            "properties": {"category": "pricing"},
            "idempotency_key": "once",
        },
    )
    assert r.status_code == 202 and r.json()["duplicate"] is False
    first = r.json()["event_id"]
    r = await client.post(
        "/v1/events",
        headers=AUTH,
        json={
            "lead_id": "l-1",
            "type": "page_viewed",
            "properties": {"category": "pricing"},
            "idempotency_key": "once",
        },
    )
    assert r.status_code == 202 and r.json() == {"event_id": first, "duplicate": True}
    # The key may come as the Idempotency-Key header too; the same key either way is the same event.
    pricing = {"lead_id": "l-1", "type": "page_viewed", "properties": {"category": "pricing"}}
    r = await client.post("/v1/events", headers={**AUTH, "Idempotency-Key": "once"}, json=pricing)
    assert r.status_code == 202 and r.json() == {"event_id": first, "duplicate": True}
    r = await client.post("/v1/events", headers={**AUTH, "Idempotency-Key": "once"},
                          json={**pricing, "idempotency_key": "twice"})
    assert r.status_code == 422 and "idempotency_key" in r.json()["error"]["details"]["fields"]
    # A key reused for a different event (another type, or another lead) is a conflict, not a duplicate:
    # answering duplicate would tell the client an event it never stored was taken.
    r = await client.post("/v1/events", headers=AUTH, json={**pricing, "type": "video_watched",
                                                            "idempotency_key": "once"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict", r.text
    # The key may be another lead's: the 409 names neither that event nor its lead.
    assert first not in r.text and "l-1" not in r.json()["error"]["message"], r.text
    r = await client.post("/v1/events:batch", headers=AUTH, json={"events": [
        {**pricing, "type": "video_watched", "idempotency_key": "once"}, {**pricing, "idempotency_key": "once"}]})
    body = r.json()
    assert body["accepted"] == 1 and body["duplicates"] == 1 and body["event_ids"] == [first]
    assert [x["error"]["code"] for x in body["rejected"]] == ["idempotency_conflict"]
    lead = (await client.get("/v1/leads/l-1", headers=AUTH)).json()
    assert lead["score"] == 8
    timeline = (await client.get("/v1/leads/l-1/timeline", headers=AUTH)).json()
    score_items = [i for i in timeline["items"] if i["kind"] == "score"]
    assert score_items and score_items[0]["details"]["rule"] == "pricing_page"
    page = (await client.get("/v1/leads?segment=skilled_professional&min_score=5", headers=AUTH)).json()
    assert [i["id"] for i in page["items"]] == ["l-1"]
    # Paging follows next_cursor to the end, each lead once.
    for n in range(3):
        await client.post("/v1/leads", headers=AUTH, json={"id": f"p-{n}"})
    seen: list[str] = []
    url = "/v1/leads?limit=2&stage=subscriber"
    while True:
        page = (await client.get(url, headers=AUTH)).json()
        seen += [i["id"] for i in page["items"]]
        if not page["next_cursor"]:
            break
        url = f"/v1/leads?limit=2&stage=subscriber&cursor={page['next_cursor']}"
    assert seen == ["l-1", "p-0", "p-1", "p-2"]


async def test_timeline_keeps_cause_before_effect_within_one_instant(
        api: tuple[httpx.AsyncClient, FastAPI, Running]) -> None:
    # A virtual clock gives every item the same time: each event must still come before the score
    # changes it caused, in the order the events were taken.
    client, _app, _ = api
    await client.post("/v1/leads", headers=AUTH, json={"id": "tl", "consent": {"email": True}})
    sent = [("page_viewed", {"category": "pricing"})] + [("resource_downloaded", {"n": i}) for i in range(3)]
    for etype, props in sent:
        r = await client.post("/v1/events", headers=AUTH, json={"lead_id": "tl", "type": etype, "properties": props})
        assert r.status_code == 202
    items = (await client.get("/v1/leads/tl/timeline", headers=AUTH)).json()["items"]
    assert len({i["at"] for i in items}) == 1
    flow = [i["type"] if i["kind"] == "event" else i["details"]["rule"] for i in items]
    assert flow == ["consent_given", "page_viewed", "pricing_page", "resource_downloaded", "content_download",
                    "resource_downloaded", "content_download", "resource_downloaded", "three_resource_downloads",
                    "content_download"]
    assert [i["details"]["properties"].get("n") for i in items if i["type"] == "resource_downloaded"] == [0, 1, 2]


async def test_timeline_shows_an_event_dated_ahead_of_the_clock_before_what_it_caused(
        api: tuple[httpx.AsyncClient, FastAPI, Running]) -> None:
    # A CRM's won deal is dated by the CRM's modification time, which may run ahead of ours (sync.yaml's
    # max_clock_skew_s; the gateway takes a day). Sorted by that time, the win came after the stage change
    # and journey goal it caused, which are stamped when the platform made them; here an event ahead of
    # the clock and the score change it caused, both scoring's. An item is placed at the time it claims,
    # but never after the platform recorded it; the claimed time is a detail.
    client, _app, _ = api
    await client.post("/v1/leads", headers=AUTH, json={"id": "tl-won", "consent": {"email": True}})
    [first] = (await client.get("/v1/leads/tl-won/timeline", headers=AUTH)).json()["items"]
    ahead = (datetime.fromisoformat(first["at"].replace("Z", "+00:00")) + timedelta(minutes=20)).isoformat()
    r = await client.post("/v1/events", headers=AUTH, json={
        "lead_id": "tl-won", "type": "page_viewed", "occurred_at": ahead, "properties": {"category": "pricing"}})
    assert r.status_code == 202, r.text
    won_id = r.json()["event_id"]
    items = (await client.get("/v1/leads/tl-won/timeline", headers=AUTH)).json()["items"]
    [won] = [i for i in items if i["kind"] == "event" and i["type"] == "page_viewed"]
    caused = [i for i in items if i["kind"] == "score" and i["details"].get("event_id") == won_id]
    assert caused, [(i["kind"], i["type"], i["at"], i.get("details")) for i in items]
    assert all(items.index(won) < items.index(c) for c in caused), [(i["type"], i["at"]) for i in items]
    assert won["at"] <= caused[0]["at"] and won["details"]["occurred_at"] == ahead.replace("+00:00", "Z")


async def test_batch_takes_good_events_and_rejects_bad(api: tuple[httpx.AsyncClient, FastAPI, Running]) -> None:
    client, _app, _ = api
    await client.post("/v1/leads", headers=AUTH, json={"id": "b"})
    events = [
        {"lead_id": "b", "type": "resource_downloaded"},
        {"lead_id": "nobody", "type": "page_viewed"},
        {"lead_id": "b", "type": "page_viewed", "occurred_at": "yesterday"},
        "not an object",
        {
            "lead_id": "b",
            "type": "video_watched",
            "properties": {"category": "demo"},
            "occurred_at": "2026-01-05T10:00:00+01:00",
        },
    ]
    r = await client.post("/v1/events:batch", headers=AUTH, json={"events": events})
    assert r.status_code == 202
    body = r.json()
    assert body["accepted"] == 2
    assert [x["index"] for x in body["rejected"]] == [1, 2, 3]
    assert body["rejected"][0]["error"]["code"] == "unknown_lead"
    r = await client.post("/v1/events:batch", headers=AUTH, json={"events": [events[0]] * 51})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    assert (await client.get("/v1/leads/b", headers=AUTH)).json()["score"] == 2 + 7


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("post", "/v1/events", b"{not json", 400, "malformed"),
        ("post", "/v1/events", b"", 400, "malformed"),
        ("post", "/v1/events", b"[1, 2]", 422, "invalid"),
        ("post", "/v1/events", json.dumps({"lead_id": 5, "type": None}).encode(), 422, "invalid"),
        ("post", "/v1/events", json.dumps({"lead_id": "x", "type": "t", "extra": 1}).encode(), 422, "invalid"),
        ("post", "/v1/events", json.dumps({"lead_id": "x", "type": "t", "properties": []}).encode(), 422, "invalid"),
        (
            "post",
            "/v1/events",
            json.dumps({"lead_id": "x", "type": "t", "occurred_at": "2026-01-05T10:00:00"}).encode(),
            422,
            "invalid",
        ),
        ("post", "/v1/events", json.dumps({"lead_id": "ghost", "type": "page_viewed"}).encode(), 404, "unknown_lead"),
        # Times the journeys schedule from must be times; an event cannot happen years from now.
        ("post", "/v1/events", json.dumps({"lead_id": "x", "type": "webinar_registered",
                                           "properties": {"webinar_id": "w", "starts_at": "tomorrow"}}).encode(),
         422, "invalid"),
        ("post", "/v1/events", json.dumps({"lead_id": "x", "type": "trial_started",
                                           "properties": {"ends_at": "2026-02-01T00:00:00"}}).encode(), 422, "invalid"),
        ("post", "/v1/events", json.dumps({"lead_id": "x", "type": "page_viewed",
                                           "occurred_at": "2999-01-01T00:00:00Z"}).encode(), 422, "invalid"),
        ("get", "/v1/leads/ghost/messages", None, 404, "not_found"),
        ("post", "/v1/leads", json.dumps({"email": "nope", "timezone": "Nowhere/City"}).encode(), 422, "invalid"),
        ("post", "/v1/leads", json.dumps({"id": 7}).encode(), 422, "invalid"),
        # An empty or falsy id is a mistake, not a request for a generated one (this run's find: 201).
        ("post", "/v1/leads", json.dumps({"id": "", "email": "e@example.com"}).encode(), 422, "invalid"),
        ("post", "/v1/leads", json.dumps({"id": 0, "email": "e@example.com"}).encode(), 422, "invalid"),
        ("patch", "/v1/leads/ghost", json.dumps({"first_name": "x"}).encode(), 404, "not_found"),
        ("get", "/v1/leads/ghost", None, 404, "not_found"),
        ("delete", "/v1/leads/ghost", None, 404, "not_found"),
        ("post", "/v1/events", b"x" * 70_000, 413, "too_large"),
        ("get", "/v1/admin/clock/nothing", None, 404, "not_found"),
        # Filters naming nothing the model defines, and cursors no listing gave, are mistakes, not empty pages.
        ("get", "/v1/leads?cursor=garbage", None, 422, "invalid"),
        ("get", "/v1/leads?stage=martian", None, 422, "invalid"),
        ("get", "/v1/leads?segment=martian", None, 422, "invalid"),
        ("get", "/v1/audiences/family?cursor=xyz", None, 422, "invalid"),
    ],
)
async def test_bad_input_gets_a_clear_4xx(
    api: tuple[httpx.AsyncClient, FastAPI, Running],
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    code: str,
) -> None:
    client, _app, _ = api
    r = await client.request(method.upper(), path, headers=AUTH, content=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    for field, problem in r.json()["error"]["details"].get("fields", {}).items():
        assert not problem.startswith(field), problem   # "occurred_at occurred_at is not ..." read badly


async def test_auth_and_health(api: tuple[httpx.AsyncClient, FastAPI, Running]) -> None:
    client, _app, _ = api
    assert (await client.get("/v1/leads/x")).status_code == 401
    assert (await client.get("/v1/leads/x", headers={"Authorization": "Bearer wrong"})).status_code == 401
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert r.json()["services"]["scoring"]["status"] == "SERVING"
    assert r.json()["services"]["journeys"]["status"] == "UNAVAILABLE"
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/events:batch" in spec["paths"] and "/v1/leads/{lead_id}/timeline" in spec["paths"]


async def test_scoring_down_gives_503_and_accepted_events_survive(
    api: tuple[httpx.AsyncClient, FastAPI, Running], settings: Settings
) -> None:
    client, app, scoring = api
    await client.post("/v1/leads", headers=AUTH, json={"id": "s"})
    r = await client.post("/v1/events", headers=AUTH, json={"lead_id": "s", "type": "form_submitted"})
    assert r.status_code == 202
    await scoring.stop(grace=0.1)
    r = await client.post("/v1/events", headers=AUTH, json={"lead_id": "s", "type": "form_submitted"})
    assert r.status_code == 503 and r.headers["Retry-After"] and r.json()["error"]["code"] == "unavailable"
    again = await start_service("scoring", settings)
    app.state.mesh.channels["scoring"] = mesh_channel(again.address)
    try:
        lead = (await client.get("/v1/leads/s", headers=AUTH)).json()
        assert lead["score"] == 5 and lead["lifecycle_stage"] == "lead"
    finally:
        await again.stop(grace=0.1)


async def test_clock_is_404_on_a_real_clock(settings: Settings) -> None:
    app = create_app(settings.with_overrides(clock="real", api_key="test-key"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        r = await client.get("/v1/admin/clock", headers=AUTH)
        assert r.status_code == 404


async def test_rate_limit_answers_429_with_retry_after(settings: Settings) -> None:
    app = create_app(settings.with_overrides(api_key="test-key", rate_limit_per_s=3))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        statuses = [(await client.get("/v1/admin/clock", headers=AUTH)) for _ in range(6)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and statuses[0].status_code == 200
    assert limited[0].json()["error"]["code"] == "rate_limited" and int(limited[0].headers["Retry-After"]) >= 1


async def test_one_email_is_one_lead_whatever_its_case(api: tuple[httpx.AsyncClient, FastAPI, Running]) -> None:
    client, _app, _ = api
    r = await client.post("/v1/leads", headers=AUTH, json={"id": "p-1", "email": "Priya@Example.com"})
    assert r.status_code == 201, r.text
    # Without an id the address (in any case) finds the lead; nothing new is created.
    r = await client.post("/v1/leads", headers=AUTH, json={"email": "priya@example.COM", "first_name": "Priya"})
    assert r.status_code == 200 and r.json()["id"] == "p-1" and r.json()["first_name"] == "Priya", r.text
    # Another id with the same address would be a second person for every journey: 409, nothing written.
    r = await client.post("/v1/leads", headers=AUTH, json={"id": "p-2", "email": "PRIYA@example.com"})
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    # The 409 does not say who holds the address (docs/INPUT-LIMITS.md): that would let a caller probe it.
    assert error["code"] == "conflict" and error["details"] == {"field": "email"} and "p-1" not in r.text
    assert (await client.get("/v1/leads/p-2", headers=AUTH)).status_code == 404
    # Moving another lead onto the address is refused the same way; its own address may change case.
    r = await client.post("/v1/leads", headers=AUTH, json={"id": "p-3", "email": "other@example.com"})
    assert r.status_code == 201, r.text
    r = await client.patch("/v1/leads/p-3", headers=AUTH, json={"email": "priya@example.com"})
    assert r.status_code == 409 and "p-1" not in r.text, r.text
    assert (await client.get("/v1/leads/p-3", headers=AUTH)).json()["email"] == "other@example.com"
    r = await client.patch("/v1/leads/p-1", headers=AUTH, json={"email": "priya@example.com"})
    assert r.status_code == 200 and r.json()["email"] == "priya@example.com", r.text


@pytest.mark.parametrize("consent", [{"Email": True}, {"emails": True}, {"email": True, "fax": True}])
async def test_consent_for_a_channel_that_is_none_of_ours_is_a_422_naming_it(
        api: tuple[httpx.AsyncClient, FastAPI, Running], consent: dict[str, bool]) -> None:
    # A new user's {"consent": {"Email": true}} was stored as given (201) and read by nothing: the lead
    # was never mailed, and nothing said why. Now the key is named, with the channels there are, and
    # nothing is stored (nor by PATCH on a lead that exists).
    client, _app, _ = api
    bad = next(k for k in consent if k not in ("email", "sms", "in_app"))
    r = await client.post("/v1/leads", headers=AUTH, json={"id": "c-1", "email": "c1@example.com", "consent": consent})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["fields"] == {f"consent.{bad}": "is not a channel (one of email, sms, in_app)"}
    assert (await client.get("/v1/leads/c-1", headers=AUTH)).status_code == 404
    r = await client.post("/v1/leads", headers=AUTH, json={"id": "c-1", "email": "c1@example.com",
                                                          "consent": {"email": True, "sms": False, "in_app": True}})
    assert r.status_code == 201 and r.json()["consent"] == {"email": True, "sms": False, "in_app": True}
    r = await client.patch("/v1/leads/c-1", headers=AUTH, json={"consent": consent})
    assert r.status_code == 422, r.text
    assert (await client.get("/v1/leads/c-1", headers=AUTH)).json()["consent"] == {
        "email": True, "sms": False, "in_app": True}


async def test_a_patch_naming_another_id_is_a_422_and_renames_nothing(
        api: tuple[httpx.AsyncClient, FastAPI, Running]) -> None:
    # A new user's PATCH /v1/leads/p-1 {"id": "p-2", ...} answered 200: nothing was renamed, the other
    # fields were merged, and nothing said the id was ignored.
    client, _app, _ = api
    r = await client.post("/v1/leads", headers=AUTH, json={"id": "p-1", "email": "p1@example.com"})
    assert r.status_code == 201
    r = await client.patch("/v1/leads/p-1", headers=AUTH, json={"id": "p-2", "attributes": {"profession": "nurse"}})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["fields"] == {"id": "cannot be changed (a lead's id is the one in the address)"}
    assert (await client.get("/v1/leads/p-1", headers=AUTH)).json()["attributes"] == {}
    assert (await client.get("/v1/leads/p-2", headers=AUTH)).status_code == 404
    r = await client.patch("/v1/leads/p-1", headers=AUTH, json={"id": "p-1", "attributes": {"profession": "nurse"}})
    assert r.status_code == 200 and r.json()["attributes"] == {"profession": "nurse"}   # its own id: fine
