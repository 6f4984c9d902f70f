"""The website tracking endpoints through the real gateway over real scoring, messaging and journeys:
site keys and origins (CORS, preflight), bots, prefetchers and Do-Not-Track, rate limits in Redis,
anonymous browsing that identification merges into the lead (timeline, score, personalization), two
devices, signed links from email clicks, and progressive forms."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from google.protobuf import json_format
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.tracking import linktoken
from gateway.tracking.ratelimit import SEEN_TTL_S, RateLimits
from nurture import collectstream, redisconn
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.settings import Settings
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.tracking.mesh import SITE, SITE_KEY, TrackingMesh, tracking_mesh

pytestmark = pytest.mark.anyio

BROWSER = {"Origin": SITE, "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                                          "Chrome/131.0 Safari/537.36"}
PHONE = "phone-0123456789abcdef"
LAPTOP = "laptop-0123456789abcdef"


@pytest.fixture
async def mesh(settings: Settings, tmp_path: Path) -> AsyncIterator[TrackingMesh]:
    async with tracking_mesh(settings, tmp_path, origins=(SITE, "https://www.borderbridge.example")) as m:
        yield m


def views(*pages: tuple[str, str], start: int = 0) -> list[dict[str, Any]]:
    return [{"id": f"ev-{start + i}", "type": "page_viewed", "properties": {"page": path, "category": category}}
            for i, (path, category) in enumerate(pages)]


async def collect(mesh: TrackingMesh, visitor: str, events: list[dict[str, Any]], **headers: str) -> Any:
    return await mesh.client.post(f"/t/v1/collect?k={SITE_KEY}", headers={**BROWSER, **headers},
                                  content=json.dumps({"visitor_id": visitor, "events": events}))


async def test_the_snippet_is_served_small_and_plain(mesh: TrackingMesh) -> None:
    r = await mesh.client.get("/t/nurture.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert len(r.content) < 16_000 and b"sendBeacon" in r.content and b"import " not in r.content


async def test_a_site_key_works_only_from_its_origins(mesh: TrackingMesh) -> None:
    ok = await mesh.client.options(f"/t/v1/collect?k={SITE_KEY}", headers={
        "Origin": SITE, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert ok.status_code == 204 and ok.headers["access-control-allow-origin"] == SITE
    assert "POST" in ok.headers["access-control-allow-methods"]
    for origin in ("https://evil.example", "http://site.example.evil.example", "null"):
        refused = await mesh.client.options(f"/t/v1/collect?k={SITE_KEY}", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
        posted = await collect(mesh, PHONE, views(("/", "home")), Origin=origin)
        assert posted.status_code == 403 and posted.json()["error"]["code"] == "origin_not_allowed"
    no_origin = await mesh.client.post(f"/t/v1/collect?k={SITE_KEY}", headers={"User-Agent": BROWSER["User-Agent"]},
                                       json={"visitor_id": PHONE, "events": views(("/", "home"))})
    assert no_origin.status_code == 403
    unknown = await mesh.client.post("/t/v1/collect?k=not-a-key-0123456789", headers=BROWSER,
                                     json={"visitor_id": PHONE, "events": views(("/", "home"))})
    assert unknown.status_code == 403 and unknown.json()["error"]["code"] == "unknown_site_key"
    # A site key opens nothing of the API.
    assert (await mesh.client.get("/v1/leads", headers={"Authorization": f"Bearer {SITE_KEY}"})).status_code == 401


async def test_bots_prefetchers_and_do_not_track_are_not_collected(mesh: TrackingMesh) -> None:
    for headers in ({"User-Agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"},
                    {"User-Agent": "Mozilla/5.0 HeadlessChrome/131.0"}, {"Sec-Purpose": "prefetch"},
                    {"Purpose": "prefetch"}, {"DNT": "1"}, {"Sec-GPC": "1"}):
        r = await collect(mesh, PHONE, views(("/pricing", "pricing")), **headers)
        assert r.status_code == 202 and r.json()["accepted"] == 0 and r.json()["ignored"], headers
    shown = await mesh.client.get(f"/t/v1/personalization?k={SITE_KEY}&v={PHONE}", headers=BROWSER)
    assert shown.json()["known"] is False
    got = await mesh.client.get(f"/t/v1/form?k={SITE_KEY}&v={PHONE}", headers=BROWSER)
    assert got.status_code == 200


async def test_do_not_track_and_gpc_are_honoured_as_the_key_is_configured(settings: Settings, tmp_path: Path) -> None:
    """A key that does not honour them collects such visitors; one that honours only GPC ignores GPC
    and collects Do-Not-Track. Bots are never collected, whatever the key says."""
    async with tracking_mesh(settings, tmp_path, services=("scoring",), honor_dnt=False, honor_gpc=False) as mesh:
        for n, headers in enumerate(({"DNT": "1"}, {"Sec-GPC": "1"}, {"DNT": "1", "Sec-GPC": "1"})):
            r = await collect(mesh, PHONE, views(("/pricing", "pricing"), start=n), **headers)
            assert r.status_code == 202 and r.json() == {"accepted": 1, "duplicates": 0, "rejected": []}, headers
        bot = await collect(mesh, PHONE, views(("/", "home"), start=9), **{"User-Agent": "curl/8.5.0"})
        assert bot.json()["ignored"] == "bot"
    async with tracking_mesh(settings, tmp_path / "gpc", services=("scoring",), honor_dnt=False) as mesh:
        gpc = await collect(mesh, LAPTOP, views(("/", "home")), **{"Sec-GPC": "1"})
        assert gpc.json() == {"accepted": 0, "duplicates": 0, "rejected": [], "ignored": "global_privacy_control"}
        dnt = await collect(mesh, LAPTOP, views(("/", "home"), start=1), DNT="1")
        assert dnt.json()["accepted"] == 1


async def test_events_outside_the_allowed_set_are_refused_one_by_one(mesh: TrackingMesh) -> None:
    r = await collect(mesh, PHONE, [
        *views(("/pricing", "pricing")),
        {"id": "bad-1", "type": "checkout_started", "properties": {}},
        {"id": "bad-2", "type": "page_viewed", "properties": {"deal_value": 100000}},
        {"id": "bad 3", "type": "page_viewed", "properties": {}},
        {"id": "bad-4", "type": "page_viewed", "properties": {"page": {"nested": True}}}])
    assert r.status_code == 202 and r.json()["accepted"] == 1
    assert [x["index"] for x in r.json()["rejected"]] == [1, 2, 3, 4]
    assert r.headers["access-control-allow-origin"] == SITE
    for body in ({"visitor_id": "short", "events": views(("/", "home"))}, {"visitor_id": PHONE, "events": []},
                 {"visitor_id": PHONE, "events": views(*[("/", "home")] * 51)}, {"visitor_id": PHONE, "x": 1}):
        bad = await mesh.client.post(f"/t/v1/collect?k={SITE_KEY}", headers=BROWSER, content=json.dumps(body))
        assert bad.status_code == 422 and bad.headers["access-control-allow-origin"] == SITE, body
    malformed = await mesh.client.post(f"/t/v1/collect?k={SITE_KEY}", headers=BROWSER, content=b"{not json")
    assert malformed.status_code == 400 and malformed.headers["access-control-allow-origin"] == SITE


async def test_anonymous_browsing_merges_into_the_lead_on_identification(mesh: TrackingMesh) -> None:
    pages = [("/guides/canada", "country"), ("/pricing", "pricing"), ("/pricing/family", "pricing")]
    r = await collect(mesh, PHONE, views(*pages))
    assert r.json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    again = await collect(mesh, PHONE, views(*pages[:1]))  # a resend of the first (a beacon and a retry)
    assert again.json()["duplicates"] == 1
    before = (await mesh.client.get(f"/t/v1/personalization?k={SITE_KEY}&v={PHONE}", headers=BROWSER)).json()
    assert before["known"] is False and any("pricing" in c["reason"] for c in before["recommended_content"])

    who = await mesh.client.post(f"/t/v1/identify?k={SITE_KEY}", headers=BROWSER,
                                 content=json.dumps({"visitor_id": PHONE, "email": "nora@example.com",
                                                     "first_name": "Nora"}))
    assert who.status_code == 200 and who.json() == {"identified": True, "merged": 3}
    retry = await mesh.client.post(f"/t/v1/identify?k={SITE_KEY}", headers=BROWSER,
                                   json={"visitor_id": PHONE, "email": "nora@example.com"})
    assert retry.json() == {"identified": True, "merged": 0}
    await mesh.settle()

    lead = (await mesh.api("GET", "/v1/leads?limit=10"))
    leads = lead["items"] if "items" in lead else lead["leads"]
    nora = next(x for x in leads if x["email"] == "nora@example.com")
    assert nora["first_name"] == "Nora" and nora["score"] > 0
    timeline = (await mesh.api("GET", f"/v1/leads/{nora['id']}/timeline"))["items"]
    seen = [i["details"]["properties"]["page"] for i in timeline if i["kind"] == "event" and i["type"] == "page_viewed"]
    assert seen == [p for p, _ in pages]
    notes = [i for i in timeline if i["type"] == "visitor_merged"]
    assert len(notes) == 1 and f"merged 3 anonymous events from visitor {PHONE}" in notes[0]["summary"]
    scores = [i for i in timeline if i["kind"] == "score"]
    assert sum(i["details"]["delta"] for i in scores) >= nora["score"] > 0
    after = (await mesh.client.get(f"/t/v1/personalization?k={SITE_KEY}&v={PHONE}", headers=BROWSER)).json()
    assert after["known"] is True
    assert after == {**after, **{k: v for k, v in (await mesh.api(
        "GET", f"/v1/leads/{nora['id']}/personalization")).items() if k in after}}

    # The same person on a second device: its history merges into the same lead.
    await collect(mesh, LAPTOP, views(("/guides/nursing", "credentials"), start=10))
    second = await mesh.client.post(f"/t/v1/identify?k={SITE_KEY}", headers=BROWSER,
                                    json={"visitor_id": LAPTOP, "email": "NORA@example.com"})
    assert second.json() == {"identified": True, "merged": 1}
    timeline = (await mesh.api("GET", f"/v1/leads/{nora['id']}/timeline"))["items"]
    assert len([i for i in timeline if i["type"] == "visitor_merged"]) == 2
    assert [i["details"]["properties"]["page"] for i in timeline if i["type"] == "page_viewed"] == [
        *[p for p, _ in pages], "/guides/nursing"]


async def test_an_email_click_identifies_the_visitor_with_a_signed_token(mesh: TrackingMesh) -> None:
    await mesh.api("POST", "/v1/leads", json={"id": "ana", "email": "ana@example.com", "consent": {"email": True},
                                             "attributes": {"profession": "nurse"}})
    await mesh.settle()
    async with mesh_channel(mesh.settings.messaging_addr) as ch:
        sent = await messaging_pb2_grpc.MessagingStub(ch).Send(messaging_pb2.SendRequest(
            dedupe_key="ana:triggers:1:pricing_page:0", lead_id="ana", journey="triggers", journey_version=1,
            step="pricing_page", channel="email", template="triggers.pricing_page", context_json="{}"), timeout=10)
    assert sent.status in ("sent", "scheduled"), json_format.MessageToDict(sent)
    await mesh.settle()
    mail = "\n".join(p.read_text(errors="replace") for p in mesh.sink.messages())
    links = re.findall(r"http://[^\s\"'<>]+/t/c/[A-Za-z0-9._~%-]+", mail.replace("=\n", ""))
    assert links, mail[:2000]
    clicked = await mesh.client.get("/t/c/" + links[0].split("/t/c/", 1)[1])
    assert clicked.status_code == 302
    location = clicked.headers["location"]
    assert location.startswith("https://www.borderbridge.example/") and f"{linktoken.PARAM}=" in location
    token = re.search(rf"{linktoken.PARAM}=([^&]+)", location).group(1)  # type: ignore[union-attr]

    await collect(mesh, PHONE, views(("/pricing", "pricing")))
    r = await mesh.client.post(f"/t/v1/identify?k={SITE_KEY}", headers=BROWSER,
                               json={"visitor_id": PHONE, "link": token})
    assert r.json() == {"identified": True, "merged": 1}
    timeline = (await mesh.api("GET", "/v1/leads/ana/timeline"))["items"]
    assert any(i["type"] == "visitor_merged" for i in timeline)

    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    expired = linktoken.sign(mesh.settings.secret, "ana", datetime.now(UTC) - timedelta(days=8))
    other = linktoken.sign("another-secret", "ana", datetime.now(UTC))
    for bad in (forged, expired, other, "nonsense"):
        r = await mesh.client.post(f"/t/v1/identify?k={SITE_KEY}", headers=BROWSER,
                                   json={"visitor_id": LAPTOP, "link": bad})
        assert r.status_code == 422, bad


async def test_progressive_forms_ask_what_is_unknown_and_store_answers(mesh: TrackingMesh) -> None:
    url = f"/t/v1/form?k={SITE_KEY}"
    first = (await mesh.client.get(f"{url}&v={PHONE}", headers=BROWSER)).json()["fields"]
    assert [f["key"] for f in first] == ["email", "first_name"]
    bad = await mesh.client.post(url, headers=BROWSER, json={"visitor_id": PHONE, "answers": {
        "email": "not-an-email", "timeline": "someday", "favourite_colour": "blue"}})
    assert bad.status_code == 422
    assert set(bad.json()["error"]["details"]["fields"]) == {"email", "timeline", "favourite_colour"}
    assert bad.headers["access-control-allow-origin"] == SITE
    kept = await mesh.client.post(url, headers=BROWSER, json={"visitor_id": PHONE, "answers": {
        "countries_of_interest": ["CA", "AU"], "first_name": "Lea"}})
    assert kept.json() == {"stored": 2, "identified": False, "merged": 0}
    nxt = (await mesh.client.get(f"{url}&v={PHONE}&limit=3", headers=BROWSER)).json()["fields"]
    assert [f["key"] for f in nxt] == ["email", "profession", "moving_with_family"]
    assert nxt[2]["kind"] == "boolean"
    done = await mesh.client.post(url, headers=BROWSER,
                                  json={"visitor_id": PHONE, "answers": {"email": "lea@example.com"}})
    assert done.json()["identified"] is True
    await mesh.settle()
    page = await mesh.api("GET", "/v1/leads?limit=10")
    lea = next(x for x in (page.get("items") or page.get("leads")) if x["email"] == "lea@example.com")
    assert lea["first_name"] == "Lea" and lea["attributes"]["countries_of_interest"] == ["CA", "AU"]
    nxt = (await mesh.client.get(f"{url}&v={PHONE}", headers=BROWSER)).json()["fields"]
    assert [f["key"] for f in nxt] == ["profession", "moving_with_family"]


async def _clear_of_a_minute_edge() -> None:
    """The visitor limit counts in wall-clock minutes: requests that must share one window start early in
    one (under load a block of them takes seconds, and a new minute would reset the count mid-way)."""
    left = 60 - time.time() % 60
    if left < 20:
        await asyncio.sleep(left + 0.1)


async def test_rate_limits_per_visitor_and_per_key(settings: Settings, tmp_path: Path) -> None:
    async with tracking_mesh(settings, tmp_path, services=("scoring",), visitor_per_min=3, rate_per_s=1000) as mesh:
        await _clear_of_a_minute_edge()
        assert (await collect(mesh, PHONE, views(("/a", "home"), ("/b", "home")))).status_code == 202
        assert (await collect(mesh, PHONE, views(("/c", "home"), start=5))).status_code == 202
        over = await collect(mesh, PHONE, views(("/d", "home"), start=6))
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
        assert over.headers["access-control-allow-origin"] == SITE
        assert over.json()["error"]["details"]["scope"] == "visitor"
        assert (await collect(mesh, LAPTOP, views(("/d", "home")))).status_code == 202  # another visitor is not held
    async with tracking_mesh(settings, tmp_path / "v", services=("scoring",), visitor_per_min=5,
                             rate_per_s=1000) as mesh:
        # Concurrent requests are counted together (one Redis call for a batch): each still gets its own
        # count, so exactly the limit gets through, and every counter expires with its window.
        tablet = "tablet-0123456789abcdef"  # counted afresh (the Redis of this test holds the phone's counts)
        await _clear_of_a_minute_edge()
        replies = await asyncio.gather(*(collect(mesh, tablet, views(("/", "home"), start=n)) for n in range(12)))
        assert sorted(r.status_code for r in replies) == [202] * 5 + [429] * 7
        other = await collect(mesh, "desktop-0123456789abcdef", views(("/", "home")))
        assert other.status_code == 202 and other.json()["accepted"] == 1  # another visitor is not held
        redis = aioredis.from_url(mesh.settings.redis_url)
        try:
            counters = [k async for k in redis.scan_iter(match="nurture:t:rl:*")]
            seen = [k for k in counters if b":seen:" in k]  # each visitor's event ids, for `duplicates`
            assert seen and all(0 < ttl <= SEEN_TTL_S for ttl in [await redis.ttl(k) for k in seen])
            ttls = {k: await redis.ttl(k) for k in counters if k not in seen}
            # A key's per-second counter lives 2 s: on a loaded machine it can expire between the scan and
            # the read of its TTL (-2, gone with its window). A counter without expiry (-1) is what fails.
            assert ttls and all(0 < ttl <= 61 or ttl == -2 for ttl in ttls.values()), ttls
            assert any(b":v:" in k and 0 < ttl <= 61 for k, ttl in ttls.items()), ttls  # the visitors' minute
            assert not any(tablet.encode() in k or SITE_KEY.encode() in k for k in counters)
        finally:
            await redis.aclose()
    async with tracking_mesh(settings, tmp_path / "k", services=("scoring",), rate_per_s=2,
                             visitor_per_min=100) as mesh:
        replies = await asyncio.gather(*(collect(mesh, f"visitor-{n:02d}-0123456789ab", views(("/", "home")))
                                         for n in range(10)))
        statuses = [r.status_code for r in replies]
        # Ten requests at once against 2 a second: whatever windows they fall in, most are refused.
        assert 429 in statuses and statuses.count(202) <= 4, statuses


def batch_sizes(mesh: TrackingMesh) -> list[int]:
    """The sizes of the collect batches from now on (the real handler still runs each)."""
    collector = mesh.app.app.state.tracking.collector  # type: ignore[attr-defined]
    handle, sizes = collector._handle, []

    async def counted(visits: list[Any]) -> Any:
        sizes.append(len(visits))
        return await handle(visits)

    collector._batcher._handle = counted
    return sizes


async def test_a_batch_of_collects_gives_each_request_its_own_outcome(settings: Settings, tmp_path: Path) -> None:
    """Concurrent requests are counted and appended together (one Redis call), and each hears its own
    outcome: over its limit, accepted, or its own events rejected."""
    async with tracking_mesh(settings, tmp_path, services=("scoring",), visitor_per_min=3) as mesh:
        three = views(("/a", "home"), ("/b", "home"), ("/c", "home"))
        assert (await collect(mesh, PHONE, three)).json()["accepted"] == 3
        sizes = batch_sizes(mesh)
        bad = [{"id": "ev-9", "type": "purchase_made", "properties": {}}]
        first, *replies = await asyncio.gather(
            collect(mesh, "first-0123456789abcdef", views(("/", "home"))),  # goes alone; the rest queue behind it
            collect(mesh, PHONE, views(("/d", "home"), start=3)),            # over the visitor's 3 a minute
            collect(mesh, LAPTOP, views(("/c", "home"), ("/e", "country"))),
            collect(mesh, "tablet-0123456789abcdef", bad),                  # only an event outside the set
            collect(mesh, "desktop-0123456789abcdef", views(("/d", "pricing")) + bad))
        assert sizes == [1, 4]
        assert first.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
        over, laptop, tablet, desktop = replies
        assert over.status_code == 429 and over.json()["error"]["details"]["scope"] == "visitor"
        assert over.headers["access-control-allow-origin"] == SITE
        assert laptop.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
        assert tablet.status_code == 202 and tablet.json()["accepted"] == 0
        assert [r["index"] for r in tablet.json()["rejected"]] == [0]
        assert desktop.status_code == 202 and desktop.json()["accepted"] == 1
        assert [r["index"] for r in desktop.json()["rejected"]] == [1]
        # The accepted events were taken: sent again, they are duplicates.
        assert (await collect(mesh, LAPTOP, views(("/c", "home")))).json()["duplicates"] == 1
        assert (await collect(mesh, "desktop-0123456789abcdef", views(("/d", "pricing")))).json()["duplicates"] == 1


async def test_scoring_down_loses_no_answered_event(settings: Settings, tmp_path: Path) -> None:
    """Scoring is down: collect requests are still answered (their events wait in the collect stream),
    a request over its limit still hears 429, and once scoring is back every answered event is stored,
    once, and an identification merges them all."""
    async with tracking_mesh(settings, tmp_path, services=("scoring",), visitor_per_min=3) as mesh:
        assert (await collect(mesh, PHONE, views(("/a", "home"), ("/b", "home"), ("/c", "home")))).status_code == 202
        await mesh.services["scoring"].stop(grace=0.2)
        first_id = "first-0123456789abcdef"
        replies = await asyncio.gather(
            collect(mesh, first_id, views(("/", "home"), ("/p", "pricing"))),
            collect(mesh, PHONE, views(("/d", "home"), start=3)),  # over its limit of 3 a minute
            collect(mesh, LAPTOP, views(("/b", "pricing"), ("/c", "pricing"))))
        first, over, laptop = replies
        assert over.status_code == 429 and over.json()["error"]["details"]["scope"] == "visitor"
        assert first.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
        assert laptop.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
        # A resend while scoring is down is a duplicate already (the gateway remembers the ids it took).
        assert (await collect(mesh, LAPTOP, views(("/b", "pricing")))).json()["duplicates"] == 1
        mesh.services["scoring"] = scoring = await start_service("scoring", mesh.settings)
        channels = mesh.app.app.state.mesh.channels  # type: ignore[attr-defined]
        await channels["scoring"].close()
        channels["scoring"] = mesh_channel(scoring.address)
        # No settle first: the identification itself waits for the visitor's two page views.
        r = await mesh.client.post(f"/t/v1/identify?k={SITE_KEY}", headers=BROWSER,
                                   json={"visitor_id": first_id, "email": "first@example.com"})
        assert r.json() == {"identified": True, "merged": 2}, r.text
        await mesh.settle()
        async with mesh_channel(scoring.address) as ch:
            stub = scoring_pb2_grpc.ScoringStub(ch)
            laptop_now = await stub.GetVisitor(scoring_pb2.VisitorRequest(visitor_id=LAPTOP), timeout=10)
            assert laptop_now.anonymous_events == 2  # the resend was not stored twice
            phone = await stub.GetVisitor(scoring_pb2.VisitorRequest(visitor_id=PHONE), timeout=10)
            assert phone.anonymous_events == 3  # the refused fourth was not kept
            first_now = await stub.GetVisitor(scoring_pb2.VisitorRequest(visitor_id=first_id), timeout=10)
            assert first_now.lead_id and first_now.anonymous_events == 0  # both merged, none left behind


async def test_a_full_collect_stream_is_a_503_until_scoring_takes_entries_off(settings: Settings,
                                                                            tmp_path: Path) -> None:
    """Scoring away: the collect stream stops growing at its bound; a request past it is answered 503
    with Retry-After and CORS, nothing of it appended or marked seen, so its resend is taken once there is
    room again."""
    async with tracking_mesh(settings, tmp_path, services=()) as mesh:  # no scoring: nothing is taken off
        collector = mesh.app.app.state.tracking.collector  # type: ignore[attr-defined]
        working = collector.limits
        client = redisconn.connect(mesh.settings)
        collector.limits = RateLimits(client, mesh.settings.bus_shards, stream_max=2)
        stream = collectstream.stream_key(collectstream.shard_for(SITE_KEY, mesh.settings.bus_shards))
        try:
            for n in range(2):
                r = await collect(mesh, f"visitor-{n:02d}-0123456789ab", views(("/", "home")))
                assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
            full = await collect(mesh, "visitor-02-0123456789ab", views(("/", "home"), ("/a", "home")))
            assert full.status_code == 503 and full.json()["error"]["code"] == "unavailable", full.text
            assert full.headers["retry-after"] == "30" and full.headers["access-control-allow-origin"] == SITE
            assert await client.xlen(stream) == 2
            [(first, _)] = await client.xrange(stream, count=1)
            await client.xdel(stream, first)  # as scoring does once it has stored an entry
            again = await collect(mesh, "visitor-02-0123456789ab", views(("/", "home"), ("/a", "home")))
            assert again.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
            assert await client.xlen(stream) == 2
        finally:
            collector.limits = working
            await client.aclose()


async def test_redis_down_is_a_503_for_every_request_of_the_batch(settings: Settings, tmp_path: Path) -> None:
    """The rate limits cannot be counted: nothing is taken (no event is stored unlimited), every request
    counted together hears it, with CORS headers and Retry-After; counting again once Redis answers."""
    async with tracking_mesh(settings, tmp_path, services=("scoring",)) as mesh:
        collector = mesh.app.app.state.tracking.collector  # type: ignore[attr-defined]
        working = collector.limits
        collector.limits = RateLimits(aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0"),  # nobody listens
                                      mesh.settings.bus_shards)
        try:
            replies = await asyncio.gather(*(collect(mesh, f"visitor-{n:02d}-0123456789ab", views(("/", "home")))
                                             for n in range(6)))
        finally:
            await collector.limits.close()
            collector.limits = working
        for r in replies:
            assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
            assert r.headers["retry-after"] and r.headers["access-control-allow-origin"] == SITE
        again = await collect(mesh, "visitor-00-0123456789ab", views(("/", "home")))
        assert again.json() == {"accepted": 1, "duplicates": 0, "rejected": []}  # the refused one was not kept


async def test_the_merged_history_moves_journeys_as_if_it_had_been_known(mesh: TrackingMesh) -> None:
    await mesh.api("POST", "/v1/leads", json={
        "id": "sam", "email": "sam@example.com", "consent": {"email": True}, "timezone": "UTC",
        "attributes": {"profession": "engineer", "countries_of_interest": ["CA"]}})
    await mesh.settle()
    before = (await mesh.api("GET", "/v1/leads/sam/timeline"))["items"]
    await collect(mesh, PHONE, views(("/pricing", "pricing"), ("/pricing/plans", "pricing")))
    await mesh.settle()
    assert (await mesh.api("GET", "/v1/leads/sam/timeline"))["items"] == before  # anonymous: nobody heard
    r = await mesh.client.post(f"/t/v1/identify?k={SITE_KEY}", headers=BROWSER,
                               json={"visitor_id": PHONE, "email": "sam@example.com"})
    assert r.json() == {"identified": True, "merged": 2}
    await mesh.settle()
    after = (await mesh.api("GET", "/v1/leads/sam/timeline"))["items"]
    new = [i for i in after if i not in before]
    # The pricing trigger (the playbook's) fired on the merged page view, and its email is queued.
    triggered = [i for i in new if i["kind"] == "journey" and "pricing_page" in i["summary"]]
    assert triggered and "page_viewed category=pricing" in triggered[0]["summary"]
    assert any(i["kind"] == "message" and "triggers.pricing_page" in i["summary"] for i in new)
    assert [i["kind"] for i in new].index("journey") > [i["type"] for i in new].index("page_viewed")


async def test_a_collect_batch_runs_in_the_trace_of_a_sampled_request(settings: Settings, tmp_path: Path,
                                                                        spans: InMemorySpanExporter) -> None:
    """A batch's Redis call joins the first sampled request it carries (telemetry.batch_parent), not the
    trace of whichever request's task started the batch, and scoring stores each event in its request's
    trace (the traceparent rides in the stream entry): here an unsampled request queued first and a
    sampled one behind it, in one batch after a request that went alone."""
    unsampled = trace.SpanContext(trace_id=0x5EED, span_id=0x5EED, is_remote=True,
                                  trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT))

    async def quiet(coro: Any) -> Any:
        token = otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(unsampled)))
        try:
            return await coro
        finally:
            otel_context.detach(token)

    async with tracking_mesh(settings, tmp_path, services=("scoring",)) as mesh:
        sizes = batch_sizes(mesh)
        spans.clear()
        await asyncio.gather(
            collect(mesh, "first-0123456789abcdef", views(("/", "home"))),
            quiet(collect(mesh, PHONE, views(("/a", "home")))),
            collect(mesh, LAPTOP, views(("/b", "home"))))
        assert sizes == [1, 2]
        await mesh.settle()
        finished = spans.get_finished_spans()
        requests = [s for s in finished if s.name.startswith("POST /t/v1/collect")]
        assert len(requests) == 2   # the unsampled request recorded nothing
        # Scoring stores the stream's entries in batches of its own: each sampled request's event is stored
        # in that request's trace (the store span's parent, or one of its links).
        stores = [s for s in finished if s.name == "collect stream store"]
        joined = {s.context.trace_id for s in stores} | {link.context.trace_id for s in stores for link in s.links}
        assert stores and {r.context.trace_id for r in requests} <= joined, [(x.name, hex(x.context.trace_id))
                                                                             for x in finished]
        assert all(s.context.trace_id != 0x5EED for s in finished)


async def test_a_page_on_the_gateways_own_origin_reads_its_form_and_personalization(settings: Settings,
                                                                                  tmp_path: Path) -> None:
    """`make run`'s development site key allows the gateway's own origin. A browser sends no `Origin` on a
    same-origin GET (the Fetch standard), so a page served there calling nurture.formFields() or
    personalization() was refused (403 origin_not_allowed) while its collect POSTs went through. Such a
    request says `Sec-Fetch-Site: same-origin`: its origin is the gateway's own, when the key allows it."""
    own = "http://gw"   # the test client's address: Host gw
    ua = {"User-Agent": BROWSER["User-Agent"]}
    async with tracking_mesh(settings, tmp_path, origins=(SITE, own)) as m:
        for path in (f"/t/v1/form?k={SITE_KEY}&v={PHONE}", f"/t/v1/personalization?k={SITE_KEY}&v={PHONE}"):
            r = await m.client.get(path, headers={**ua, "Sec-Fetch-Site": "same-origin"})
            assert r.status_code == 200, r.text
            assert r.headers["access-control-allow-origin"] == own
            # Not same-origin, or no word from the browser at all: the origin is unknown, as before.
            for fetch_site in ("cross-site", "same-site", None):
                headers = {**ua, **({"Sec-Fetch-Site": fetch_site} if fetch_site else {})}
                refused = await m.client.get(path, headers=headers)
                assert refused.status_code == 403 and refused.json()["error"]["code"] == "origin_not_allowed"
    async with tracking_mesh(settings, tmp_path / "other") as m:   # a key that does not allow the gateway
        r = await m.client.get(f"/t/v1/form?k={SITE_KEY}&v={PHONE}", headers={**ua, "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
