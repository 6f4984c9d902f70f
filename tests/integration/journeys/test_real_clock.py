"""With the real clock the service runs on its own: the bus consumer and the timer loop fire steps
without any Settle call."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nurture import redisconn
from nurture.bus import Publisher
from nurture.clock import RealClock
from nurture.settings import Settings
from tests.conftest import free_port, start_service
from tests.integration.journeys.fakes import Recorder, lead, publish, start_fakes

pytestmark = pytest.mark.anyio


async def test_real_clock_runs_steps_without_settle(settings: Settings) -> None:
    rec = Recorder()
    mport = free_port()
    messaging, crm = await start_fakes(rec, messaging_port=mport)
    settings = settings.with_overrides(clock="real", messaging_addr=f"127.0.0.1:{mport}")
    running = await start_service("journeys", settings)
    client = redisconn.connect(settings)
    try:
        await publish(Publisher(client, settings.bus_shards), RealClock(), lead("r-1", "entrepreneur"),
                      "lead_created")
        for _ in range(100):
            if rec.sends:
                break
            await asyncio.sleep(0.05)
        assert [r.dedupe_key for r in rec.sends] == ["r-1:entrepreneur:1:email_01:1.1"]
    finally:
        await running.stop(grace=0.2)
        await messaging.stop(0)
        await crm.stop(0)
        await client.aclose()


async def test_a_timer_batch_is_one_trace_with_the_sends_it_asks_for(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    """The timer loop starts a trace of its own (`timers fire`): journeys' SQL and the messaging call it
    makes are in it, so a step sent by a timer can be followed from journeys' side. Without it journeys
    recorded nothing of the batch and messaging's server span was a root."""
    rec = Recorder()
    mport = free_port()
    messaging, crm = await start_fakes(rec, messaging_port=mport)
    settings = settings.with_overrides(clock="real", messaging_addr=f"127.0.0.1:{mport}")
    running = await start_service("journeys", settings)
    client = redisconn.connect(settings)
    try:
        spans.clear()
        await publish(Publisher(client, settings.bus_shards), RealClock(), lead("r-2", "entrepreneur"),
                      "lead_created")
        for _ in range(100):
            if rec.sends:
                break
            await asyncio.sleep(0.05)
        assert rec.sends
    finally:
        await running.stop(grace=0.2)
        await messaging.stop(0)
        await crm.stop(0)
        await client.aclose()
    finished = spans.get_finished_spans()
    send = next(s for s in finished if s.name.startswith("/nurture.api.messaging.v1.Messaging/Send"))
    same = [s for s in finished if s.context.trace_id == send.context.trace_id]
    roots = [s.name for s in same if s.parent is None]
    assert roots == ["timers fire"], roots
    assert any(s.name == "sql transaction" for s in same)
