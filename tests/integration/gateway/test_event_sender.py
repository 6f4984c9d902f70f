"""Concurrent single event posts are merged into fewer IngestEvents calls to a real scoring service,
yet each post gets its own result and its own trace, through to a bus consumer's handling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import redis
import sqlalchemy as sa
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import create_app
from nurture import busmessage, redisconn
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.bus import Consumer, stream_key
from nurture.busmessage import BusMessage
from nurture.service import Running
from nurture.settings import SERVICES, Settings
from tests.conftest import free_port, mesh_channel, start_service

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": "Bearer k"}
INGEST_RPC = "/nurture.api.scoring.v1.Scoring/IngestEvents"
tracer = trace.get_tracer("tests.event_sender")


def gateway(settings: Settings, scoring_addr: str) -> FastAPI:
    """The gateway app with its channels open (ASGITransport runs no lifespan); only scoring is up."""
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    addrs["scoring_addr"] = scoring_addr
    app = create_app(settings.with_overrides(api_key="k", **addrs))
    for s in SERVICES:
        app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))
    return app


@pytest.fixture
async def client(settings: Settings, scoring: Running) -> AsyncIterator[httpx.AsyncClient]:
    app = gateway(settings, scoring.address)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        yield c
    for ch in app.state.mesh.channels.values():
        await ch.close()


async def make_leads(scoring: Running, leads: list[str]) -> None:
    """Straight to scoring: the gateway's lead routes also ask journeys, which these tests leave down."""
    async with mesh_channel(scoring.address) as ch:
        reply = await scoring_pb2_grpc.ScoringStub(ch).UpsertLeads(scoring_pb2.UpsertLeadsRequest(
            leads=[scoring_pb2.UpsertLeadRequest(id=lead, fields_json="{}") for lead in leads]), timeout=5)
    assert all(r.created for r in reply.results)


def ingest_calls(finished: tuple[ReadableSpan, ...]) -> list[ReadableSpan]:
    """Scoring's server spans of IngestEvents: one per call that reached it."""
    return [s for s in finished if s.name == INGEST_RPC]


def bus(settings: Settings) -> dict[str, BusMessage]:
    client = redis.Redis.from_url(settings.redis_url)
    out = {}
    for shard in range(settings.bus_shards):
        for _id, fields in client.xrange(stream_key(shard)):
            m = busmessage.decode(fields[b"m"])
            out[m.id] = m
    client.close()
    return out


async def test_concurrent_posts_share_calls_and_each_gets_its_own_result(
    client: httpx.AsyncClient, scoring: Running, settings: Settings, spans: InMemorySpanExporter
) -> None:
    leads = [f"g{i}" for i in range(4)]
    await make_leads(scoring, leads)
    n = 40
    spans.clear()
    posts = await asyncio.gather(*[
        client.post("/v1/events", headers=AUTH,
                    json={"lead_id": leads[i % len(leads)], "type": "page_viewed", "properties": {"n": i}})
        for i in range(n)])
    assert [r.status_code for r in posts] == [202] * n, [r.text for r in posts if r.status_code != 202]
    ids = [r.json()["event_id"] for r in posts]
    assert len(set(ids)) == n and not any(r.json()["duplicate"] for r in posts)
    calls = len(ingest_calls(spans.get_finished_spans()))
    assert 1 <= calls < n, f"{calls} IngestEvents calls for {n} posts: nothing was merged"
    ingests = [s for s in spans.get_finished_spans() if s.name == "ingest"]
    merged = [s.attributes.get("events") for s in ingests if s.attributes]
    assert sum(e for e in merged if isinstance(e, int)) == n  # every event went through one group commit
    # Each post's event id is the one scoring gave its own event (its lead, its properties).
    async with mesh_channel(scoring.address) as ch:
        await common_pb2_grpc.AdminStub(ch).Settle(common_pb2.SettleRequest(), timeout=5)
    published = bus(settings)
    for i, event_id in enumerate(ids):
        message = published[event_id]
        assert (message.lead_id, message.properties) == (leads[i % len(leads)], {"n": i})


async def test_a_bad_event_among_concurrent_good_ones_fails_alone(
    client: httpx.AsyncClient, scoring: Running, spans: InMemorySpanExporter
) -> None:
    await make_leads(scoring, ["ok"])
    n, bad = 20, {3, 11, 17}
    spans.clear()
    posts = await asyncio.gather(*[
        client.post("/v1/events", headers=AUTH,
                    json={"lead_id": "nobody" if i in bad else "ok", "type": "page_viewed"})
        for i in range(n)])
    calls = len(ingest_calls(spans.get_finished_spans()))
    assert calls < n, f"{calls} calls for {n} posts: the bad events did not share calls with good ones"
    for i, r in enumerate(posts):
        if i in bad:
            assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_lead", r.text
        else:
            assert r.status_code == 202, r.text
    assert len({r.json()["event_id"] for i, r in enumerate(posts) if i not in bad}) == n - len(bad)


@pytest.mark.parametrize("queued", [False, True], ids=["alone", "queued-together"])
async def test_concurrent_posts_with_one_idempotency_key_are_one_event(
    scoring: Running, settings: Settings, spans: InMemorySpanExporter, queued: bool
) -> None:
    # Alone (no call interval): the two posts leave in separate calls (one transaction each, concurrent
    # on PostgreSQL, where two calls may be in flight); queued: another post goes first, at once, and
    # the pair, arriving with the others within the call interval (NURTURE_INGEST_CALL_INTERVAL_MS, half
    # a second here so that a loaded host's slow dispatch of the posts stays inside it), waits and
    # leaves together in the next call (one transaction).
    interval_ms = 500 if queued else 0
    app = gateway(settings.with_overrides(ingest_call_interval_ms=interval_ms), scoring.address)
    ahead = settings.ingest_in_flight if queued else 0
    await make_leads(scoring, ["idem"])
    apart = 0   # rounds whose pair met in two transactions (alone)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        for round_ in range(3):
            # Past the call interval since the last round's call: the first post here goes at once.
            await asyncio.sleep(2 * interval_ms / 1000)
            key = f"key-{ahead}-{round_}"
            others = [client.post("/v1/events", headers=AUTH, json={"lead_id": "idem", "type": "page_viewed"})
                      for _ in range(ahead)]
            same = [client.post("/v1/events", headers={**AUTH, "Idempotency-Key": key},
                                json={"lead_id": "idem", "type": "page_viewed"}) for _ in range(2)]
            spans.clear()
            posts = (await asyncio.gather(*others, *same))[ahead:]
            finished = spans.get_finished_spans()
            merged = sorted((s.attributes or {}).get("events", 0) for s in finished if s.name == "ingest")
            # Alone, scoring's group commit may still take the two calls into one transaction when the
            # second arrives while the first waits for the writer (seen on PostgreSQL under load): the
            # pair is then one transaction's; at least one round of three must race in two.
            assert len(ingest_calls(finished)) == 2 and (
                merged == [1, ahead + 1] if ahead else merged in ([1, 1], [2])), \
                f"events per transaction {merged}: the pair did not leave as planned"
            apart += merged == [1, 1]
            assert [r.status_code for r in posts] == [202, 202], [r.text for r in posts]
            bodies = [r.json() for r in posts]
            assert bodies[0]["event_id"] == bodies[1]["event_id"]
            assert sorted(b["duplicate"] for b in bodies) == [False, True]
    assert queued or apart >= 1, "no round raced the pair in two transactions"
    for ch in app.state.mesh.channels.values():
        await ch.close()


async def test_posts_get_503_with_retry_after_when_scoring_is_down(settings: Settings) -> None:
    app = gateway(settings, f"127.0.0.1:{free_port()}")  # nothing listens there
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        posts = await asyncio.gather(*[
            client.post("/v1/events", headers=AUTH, json={"lead_id": "x", "type": "page_viewed"})
            for _ in range(20)])
    for ch in app.state.mesh.channels.values():
        await ch.close()
    assert [r.status_code for r in posts] == [503] * 20, [r.text for r in posts]
    assert all(r.headers.get("retry-after") and r.json()["error"]["code"] == "unavailable" for r in posts)


async def test_posts_waiting_on_a_slow_scoring_that_stops_get_503(settings: Settings) -> None:
    scoring = await start_service("scoring", settings)
    app = gateway(settings, scoring.address)
    engine = sa.create_engine(settings.database_url_for("scoring"))
    lock = engine.connect()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            await make_leads(scoring, ["s"])

            async def post() -> httpx.Response:
                return await client.post("/v1/events", headers=AUTH, json={"lead_id": "s", "type": "page_viewed"})

            # A slow database (another writer holds its lock): the first calls wait inside scoring
            # and the posts behind them wait in the gateway, when scoring stops.
            if engine.dialect.name == "sqlite":
                lock.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                lock.exec_driver_sql("BEGIN")
                lock.exec_driver_sql("LOCK TABLE scoring_leads IN ACCESS EXCLUSIVE MODE")
            tasks = [asyncio.create_task(post()) for _ in range(30)]
            await asyncio.sleep(0.3)
            assert not any(t.done() for t in tasks)
            await scoring.server.stop(0)  # in-flight calls are cancelled
            lock.rollback()
            answered = await asyncio.gather(*tasks)
            after = await asyncio.gather(*[post() for _ in range(10)])
    finally:
        lock.close()
        engine.dispose()
        await scoring.stop(grace=0)
        for ch in app.state.mesh.channels.values():
            await ch.close()
    for r in [*answered, *after]:
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
        assert r.headers.get("retry-after")


async def test_posts_racing_a_scoring_stop_get_503_never_500(settings: Settings) -> None:
    """Scoring stops as soon as the first post is answered, while the next merged call is on its way:
    that call may reach the stopping server and come back CANCELLED, which is as transient as
    UNAVAILABLE (a 500 would tell the client not to retry). The race goes either way: a few rounds."""
    codes: list[int] = []
    for round_ in range(5):
        scoring = await start_service("scoring", settings)
        app = gateway(settings, scoring.address)
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
                await make_leads(scoring, [f"r{round_}"])
                tasks = [asyncio.create_task(client.post("/v1/events", headers=AUTH,
                                                         json={"lead_id": f"r{round_}", "type": "page_viewed"}))
                         for _ in range(30)]
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                await scoring.server.stop(0)
                answered = await asyncio.gather(*tasks)
        finally:
            await scoring.server.stop(0)
            # Let the outbox finish publishing first: a redis-py pipeline cancelled mid-flight
            # swallows the cancellation and the release then waits out its 5 s bound.
            await asyncio.sleep(0.1)
            await scoring.release()
            for ch in app.state.mesh.channels.values():
                await ch.close()
        for r in answered:
            assert r.status_code in (202, 503), r.text
            assert r.status_code == 202 or r.headers.get("retry-after")
        codes.extend(r.status_code for r in answered)
    assert 202 in codes and 503 in codes


async def test_each_merged_event_is_handled_by_a_consumer_in_its_own_posts_trace(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    # One shard and one message per read: each message is handled in its own "bus handle" span,
    # whose trace is the one its message carried.
    settings = settings.with_overrides(bus_shards=1)
    scoring = await start_service("scoring", settings)
    app = gateway(settings, scoring.address)
    handled: dict[str, int] = {}

    async def handler(messages: list[BusMessage]) -> None:
        for m in messages:
            handled[m.id] = trace.get_current_span().get_span_context().trace_id

    redis_client = redisconn.connect(settings)
    consumer = Consumer(redis_client, group="merge-trace", shards=1, handler=handler, batch=1)
    n = 10
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client, \
                mesh_channel(scoring.address) as ch:
            leads = [f"t{i}" for i in range(n)]
            await make_leads(scoring, leads)
            admin = common_pb2_grpc.AdminStub(ch)
            await admin.Settle(common_pb2.SettleRequest(), timeout=5)
            await consumer.drain()
            spans.clear()
            handled.clear()

            async def post(i: int) -> tuple[int, str]:
                # The caller's own span: the gateway's request span is its child, so it tells the
                # posts' traces apart.
                with tracer.start_as_current_span(f"client {i}") as span:
                    r = await client.post("/v1/events", headers=AUTH,
                                          json={"lead_id": leads[i], "type": "page_viewed"})
                    assert r.status_code == 202, r.text
                    return span.get_span_context().trace_id, r.json()["event_id"]

            posted = await asyncio.gather(*[post(i) for i in range(n)])
            await admin.Settle(common_pb2.SettleRequest(), timeout=5)
            await consumer.drain()
    finally:
        await redis_client.aclose()
        await scoring.stop(grace=0.2)
        for channel_ in app.state.mesh.channels.values():
            await channel_.close()
    finished = spans.get_finished_spans()
    calls = len(ingest_calls(finished))
    assert calls < n, f"{calls} calls for {n} posts: nothing was merged, this test proves nothing"
    requests = {s.context.trace_id for s in finished if s.name == "POST /v1/events"}
    assert len({t for t, _ in posted}) == n
    for trace_id, event_id in posted:
        assert trace_id in requests  # the POST span is in the client span's trace
        mine = [mid for mid in handled if mid == event_id or mid.startswith(f"{event_id}:")]
        assert mine, f"no message of {event_id} was handled"
        for mid in mine:
            assert handled[mid] == trace_id, f"{mid} was handled in another post's trace"
    handles = [s for s in finished if s.name == "bus handle merge-trace"]
    assert {s.context.trace_id for s in handles} == {t for t, _ in posted}


async def test_a_merged_call_is_recorded_in_a_sampled_posts_trace_and_never_in_an_unsampled_one(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    """Sampled and unsampled posts merged into the same calls: scoring's work on a call (its RPC span,
    the ingest, the publish) joins the trace of a sampled post it carries and links the other sampled
    ones, so every sampled post's trace reaches it; no unsampled post's trace gets a span anywhere.
    The posts that start each call are unsampled, so a call that took its first post's trace would
    record nothing."""
    settings = settings.with_overrides(bus_shards=1)
    scoring = await start_service("scoring", settings)
    app = gateway(settings, scoring.address)
    redis_client = redisconn.connect(settings)
    consumer = Consumer(redis_client, group="mixed-trace", shards=1, handler=lambda _: asyncio.sleep(0), batch=1)
    n = 12
    unsampled = {0, 1, 3, 5, 7, 9, 11}  # 0 goes alone (nothing in flight), 1 starts the next call
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client, \
                mesh_channel(scoring.address) as ch:
            leads = [f"m{i}" for i in range(n)]
            await make_leads(scoring, leads)
            admin = common_pb2_grpc.AdminStub(ch)
            await admin.Settle(common_pb2.SettleRequest(), timeout=5)
            await consumer.drain()
            spans.clear()

            async def post(i: int) -> int:
                # The caller's span: recorded, or an unsampled one, as a caller's traceparent could say.
                if i in unsampled:
                    ctx = trace.SpanContext(trace_id=0xDEAD0000 + i, span_id=0xBEEF + i, is_remote=True,
                                            trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT))
                    span: trace.Span = trace.NonRecordingSpan(ctx)
                else:
                    span = tracer.start_span(f"client {i}")
                with trace.use_span(span, end_on_exit=True):
                    r = await client.post("/v1/events", headers=AUTH, json={"lead_id": leads[i], "type": "page_viewed"})
                    assert r.status_code == 202, r.text
                return span.get_span_context().trace_id

            traces = await asyncio.gather(*[post(i) for i in range(n)])
            await admin.Settle(common_pb2.SettleRequest(), timeout=5)
            await consumer.drain()
    finally:
        await redis_client.aclose()
        await scoring.stop(grace=0.2)
        for channel_ in app.state.mesh.channels.values():
            await channel_.close()
    finished = spans.get_finished_spans()
    settles = {s.context.trace_id for s in finished if s.name.endswith("/Settle")}
    mine = [s for s in finished if s.context.trace_id not in settles]
    sampled = {t for i, t in enumerate(traces) if i not in unsampled}
    assert {s.context.trace_id for s in mine} <= sampled, "a span in an unsampled post's trace, or in no post's"
    ingests = [s for s in mine if s.name == "ingest"]
    assert max((s.attributes or {})["events"] for s in ingests) > 1, "nothing was merged: this test proves nothing"
    reached = {s.context.trace_id for s in ingests} | {link.context.trace_id for s in ingests for link in s.links}
    assert reached == sampled  # every sampled post's event is in a recorded ingest (its parent or a link)
    # Each recorded ingest is under its call's recorded RPC span: the call ran in a sampled post's trace.
    rpcs = {s.context.span_id for s in mine if s.name == INGEST_RPC}
    assert all(s.parent is not None and s.parent.span_id in rpcs for s in ingests)
    assert {s.context.trace_id for s in mine if s.name == "bus handle mixed-trace"} == sampled


async def test_posts_closer_together_than_the_call_interval_leave_in_one_call(
    settings: Settings, scoring: Running, spans: InMemorySpanExporter
) -> None:
    """Calls start at least NURTURE_INGEST_CALL_INTERVAL_MS apart: the first post of a quiet gateway goes
    at once, the posts that follow it within the interval, one at a time, wait and leave together (one
    call in flight alone would send each in its own call whenever scoring answers between them)."""
    app = gateway(settings.with_overrides(ingest_call_interval_ms=3000), scoring.address)
    await make_leads(scoring, ["paced"])
    spans.clear()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        tasks = []
        for i in range(8):
            tasks.append(asyncio.create_task(client.post("/v1/events", headers=AUTH, json={
                "lead_id": "paced", "type": "page_viewed", "properties": {"n": i}})))
            await asyncio.sleep(0.02)
        posts = await asyncio.gather(*tasks)
    for ch in app.state.mesh.channels.values():
        await ch.close()
    assert [r.status_code for r in posts] == [202] * 8, [r.text for r in posts]
    assert len({r.json()["event_id"] for r in posts}) == 8
    calls = ingest_calls(spans.get_finished_spans())
    assert len(calls) == 2, f"{len(calls)} IngestEvents calls: the first post alone, then the seven that followed"


async def test_a_full_call_leaves_without_waiting_for_the_call_interval(
    settings: Settings, scoring: Running, spans: InMemorySpanExporter
) -> None:
    """A call's worth of waiting posts (gateway.ingest.MAX_EVENTS) goes at once whatever the interval: an
    interval of a minute would otherwise hold these posts for it."""
    from gateway.ingest import MAX_EVENTS

    app = gateway(settings.with_overrides(ingest_call_interval_ms=60_000), scoring.address)
    await make_leads(scoring, ["full"])
    spans.clear()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        posts = await asyncio.wait_for(asyncio.gather(*[
            client.post("/v1/events", headers=AUTH, json={"lead_id": "full", "type": "page_viewed"})
            for _ in range(1 + MAX_EVENTS)]), timeout=45)
    for ch in app.state.mesh.channels.values():
        await ch.close()
    assert [r.status_code for r in posts] == [202] * (1 + MAX_EVENTS)
    assert len(ingest_calls(spans.get_finished_spans())) == 2  # the first post alone, then a full call


async def test_single_posts_reuse_the_gateways_stubs(client: httpx.AsyncClient, scoring: Running) -> None:
    # A stub builds a callable for each method of its service: the gateway made a messaging stub for every
    # post (to credit opens and clicks, which a page view is not) and a scoring stub for every call, a fifth
    # of its CPU per post. After the first post, posts build none.
    await make_leads(scoring, ["reuse"])
    app = client._transport.app  # type: ignore[attr-defined]  # httpx.ASGITransport keeps the app
    built: list[str] = []
    for ch in app.state.mesh.channels.values():
        inner = ch.unary_unary

        def counting(method: str, *args: object, _inner: object = inner, **kwargs: object) -> object:
            built.append(method)
            return _inner(method, *args, **kwargs)  # type: ignore[operator]

        ch.unary_unary = counting
    first = await client.post("/v1/events", headers=AUTH, json={"lead_id": "reuse", "type": "page_viewed"})
    assert first.status_code == 202, first.text
    built.clear()
    posts = await asyncio.gather(*[
        client.post("/v1/events", headers=AUTH,
                    json={"lead_id": "reuse", "type": "page_viewed", "properties": {"n": i}}) for i in range(30)])
    assert [r.status_code for r in posts] == [202] * 30
    assert built == [], f"{len(built)} method callables built for 30 posts"
