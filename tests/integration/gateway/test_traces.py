"""One trace per accepted event: gateway request → scoring RPC → SQL → publishing to Redis → a consumer;
and an event whose trace is not sampled leaves no span in any of them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import create_app
from nurture import redisconn
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.bus import Consumer
from nurture.busmessage import BusMessage
from nurture.settings import SERVICES, Settings
from tests.conftest import free_port, mesh_channel, start_service

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def _mesh(settings: Settings, handled: list[BusMessage]) -> AsyncIterator[tuple[httpx.AsyncClient, Consumer,
                                                                                      common_pb2_grpc.AdminStub]]:
    """The gateway in process over a real scoring service, a bus consumer recording what it handles,
    and lead `t` created (its own spans already finished)."""
    scoring = await start_service("scoring", settings)
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    addrs["scoring_addr"] = scoring.address
    app = create_app(settings.with_overrides(api_key="k", **addrs))
    for s in SERVICES:
        app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))

    async def handler(messages: list[BusMessage]) -> None:
        handled.extend(messages)

    redis = redisconn.connect(settings)
    consumer = Consumer(redis, group="trace-test", shards=settings.bus_shards, handler=handler)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw",
                                     headers={"Authorization": "Bearer k"}) as client, \
                mesh_channel(scoring.address) as ch:
            admin = common_pb2_grpc.AdminStub(ch)
            assert (await client.post("/v1/leads", json={"id": "t"})).status_code == 201
            await admin.Settle(common_pb2.SettleRequest(), timeout=5)
            await consumer.drain()
            yield client, consumer, admin
    finally:
        await redis.aclose()
        await scoring.stop(grace=0.2)


async def test_an_event_is_one_trace_from_gateway_to_a_consumer(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    # A bus consumer's handling of the event's message continues the same trace.
    handled: list[BusMessage] = []
    async with _mesh(settings, handled) as (client, consumer, admin):
        spans.clear()
        r = await client.post("/v1/events", json={"lead_id": "t", "type": "page_viewed"})
        assert r.status_code == 202
        await admin.Settle(common_pb2.SettleRequest(), timeout=5)
        await consumer.drain()
    assert any(m.type == "page_viewed" and m.lead_id == "t" for m in handled)
    finished = spans.get_finished_spans()
    root = next(s for s in finished if s.name == "POST /v1/events")
    same = [s for s in finished if s.context.trace_id == root.context.trace_id]
    names = {s.name for s in same}
    assert "/nurture.api.scoring.v1.Scoring/IngestEvents" in names
    assert "ingest" in names and "publish" in names and "redis XADD bus" in names
    # SQL: one span per transaction, listing its statements.
    sql = [s for s in same if s.name == "sql transaction"]
    assert any(stmt.startswith("INSERT scoring_events") for s in sql for stmt in (s.attributes or {})["db.statements"])
    assert "bus handle trace-test" in names
    # One span per request at the gateway: FastAPI's per-dependency spans stay off (they cost).
    assert not [n for n in names if n.startswith("fastapi.")]
    # One tree: the request is its only root and every other span's parent is recorded in it, so no
    # hop started a trace of its own or hung its span under one that was never recorded.
    recorded = {s.context.span_id for s in same}
    assert [s.name for s in same if s.parent is None] == ["POST /v1/events"]
    assert [s.name for s in same if s.parent is not None and s.parent.span_id not in recorded] == []
    # And nothing of the event's in another trace: each hop's span is in the request's.
    by_name = {n: {s.context.trace_id for s in finished if s.name == n} for n in ("ingest", "publish")}
    assert by_name == {"ingest": {root.context.trace_id}, "publish": {root.context.trace_id}}, by_name
    # The answer names that trace (W3C `traceresponse`), so the poster can look it up.
    assert r.headers["traceresponse"] == f"00-{root.context.trace_id:032x}-{root.context.span_id:016x}-01"


async def test_every_recorded_request_names_its_trace_in_the_answer(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    """A batch, a lead's read and a refusal are answered with their own recorded trace too."""
    async with _mesh(settings, []) as (client, _consumer, _admin):
        spans.clear()
        answers = [await client.post("/v1/events:batch", json={"events": [{"lead_id": "t", "type": "page_viewed"}]}),
                   await client.get("/v1/leads/t"), await client.get("/v1/leads/nobody"),
                   await client.post("/v1/events", json={"lead_id": "t"})]
    assert [a.status_code for a in answers] == [202, 200, 404, 422]
    roots = {f"{s.context.trace_id:032x}": s.name for s in spans.get_finished_spans() if s.parent is None}
    named = [roots.get(a.headers["traceresponse"].split("-")[1]) for a in answers]
    assert named == ["POST /v1/events:batch", "GET /v1/leads/t", "GET /v1/leads/nobody", "POST /v1/events"]


async def test_an_unsampled_event_leaves_no_span_in_any_hop(settings: Settings, spans: InMemorySpanExporter) -> None:
    """The head's decision travels with the event: a request whose trace is not sampled (here its
    parent, as a caller's unsampled `traceparent` would make it) records nothing at the gateway, in
    scoring's RPC, ingest, SQL or publish, or in the consumer that handles its message."""
    handled: list[BusMessage] = []
    unsampled = trace.SpanContext(trace_id=0x5EED, span_id=0x5EED, is_remote=True,
                                  trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT))
    async with _mesh(settings, handled) as (client, consumer, admin):
        spans.clear()
        token = otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(unsampled)))
        try:
            r = await client.post("/v1/events", json={"lead_id": "t", "type": "page_viewed"})
        finally:
            otel_context.detach(token)
        assert r.status_code == 202
        await admin.Settle(common_pb2.SettleRequest(), timeout=5)
        await consumer.drain()
    assert any(m.type == "page_viewed" and m.lead_id == "t" for m in handled)
    assert "traceresponse" not in r.headers  # no trace recorded, none named
    # Settle is a trace of its own (sampled here, with its SQL): only the event's hops must be absent.
    finished = spans.get_finished_spans()
    settles = {s.context.trace_id for s in finished if s.name.endswith("/Settle")}
    names = [s.name for s in finished if s.context.trace_id not in settles]
    assert names == [], names
