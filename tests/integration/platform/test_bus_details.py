"""The bus on a real Redis, at its edges: the consumer's span joins the trace of the first message's
request and links the others' (at most 50), a malformed entry is acknowledged and dropped, a read
takes at most `batch` entries, a dead letter keeps at most 64 KiB, a failed batch is read again by the
running consumer, and a group that cannot be created is an error, not a silent skip."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.exceptions import ResponseError

from nurture.bus import MAX_DELIVERIES, Consumer, Publisher, stream_key
from nurture.busmessage import BusMessage, decode, encode
from nurture.redisconn import shard_of
from tests.bus_messages import bus_message

pytestmark = pytest.mark.anyio
SHARDS = 4


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[BusMessage]] = []

    async def __call__(self, messages: list[BusMessage]) -> None:
        self.calls.append(messages)


def carrier_of(name: str) -> tuple[str, trace.SpanContext]:
    """The trace carrier a request span would put beside its bus message."""
    with trace.get_tracer("test").start_as_current_span(name) as span:
        carrier: dict[str, str] = {}
        inject(carrier)
        return json.dumps(carrier), span.get_span_context()


def handling_spans(spans: InMemorySpanExporter, group: str) -> list[Any]:
    return [s for s in spans.get_finished_spans() if s.name == f"bus handle {group}"]


async def test_the_handling_span_joins_the_first_request_and_links_the_others(
        redis_url: str, spans: InMemorySpanExporter) -> None:
    client = aioredis.from_url(redis_url)
    (first, first_ctx), (second, second_ctx) = carrier_of("req-1"), carrier_of("req-2")
    spans.clear()
    lead = "lead-t"
    await Publisher(client, SHARDS).publish_encoded([
        (lead, encode(bus_message("m1", lead, "x")), first),
        (lead, encode(bus_message("m2", lead, "x")), second),
        (lead, encode(bus_message("m3", lead, "x")), first),      # the same request again: no second link
        (lead, encode(bus_message("m4", lead, "x")), "not json"),  # unreadable: ignored, not an error
        (lead, encode(bus_message("m5", lead, "x")), None)])
    handler = Recorder()
    assert await Consumer(client, group="tg", shards=SHARDS, handler=handler).drain() == 5
    assert [m.id for m in handler.calls[0]] == ["m1", "m2", "m3", "m4", "m5"]
    [span] = handling_spans(spans, "tg")
    assert span.kind == trace.SpanKind.CONSUMER
    # The batch's lead and events (distinct, in order): what ops find a lead's traces by.
    assert dict(span.attributes or {}) == {"messaging.system": "redis", "messages": 5, "nurture.lead_id": "lead-t",
                                           "nurture.event_id": ["m1", "m2", "m3", "m4", "m5"]}
    assert span.context.trace_id == first_ctx.trace_id
    assert span.parent is not None and span.parent.span_id == first_ctx.span_id
    assert [link.context.span_id for link in span.links] == [second_ctx.span_id]
    await client.aclose()


def unsampled_carrier(n: int) -> str:
    """The carrier of a request whose trace the head chose not to record (flags 00)."""
    return json.dumps({"traceparent": f"00-{n:032x}-{n:016x}-00"})


async def test_the_handling_span_joins_a_sampled_request_even_when_the_first_is_not(
        redis_url: str, spans: InMemorySpanExporter) -> None:
    client = aioredis.from_url(redis_url)
    (sampled, sampled_ctx), (other, other_ctx) = carrier_of("req-s"), carrier_of("req-o")
    spans.clear()
    await Publisher(client, SHARDS).publish_encoded([
        ("lead-u", encode(bus_message("u1", "lead-u", "x")), unsampled_carrier(1)),
        ("lead-u", encode(bus_message("u2", "lead-u", "x")), sampled),
        ("lead-u", encode(bus_message("u3", "lead-u", "x")), unsampled_carrier(2)),
        ("lead-u", encode(bus_message("u4", "lead-u", "x")), other)])
    assert await Consumer(client, group="ug", shards=SHARDS, handler=Recorder()).drain() == 4
    [span] = handling_spans(spans, "ug")
    assert span.context.trace_id == sampled_ctx.trace_id
    assert [link.context.span_id for link in span.links] == [other_ctx.span_id]  # no unsampled one linked
    # A batch whose requests were none of them sampled records nothing (it starts no trace of its own).
    spans.clear()
    await Publisher(client, SHARDS).publish_encoded([
        ("lead-u", encode(bus_message("u5", "lead-u", "x")), unsampled_carrier(3)),
        ("lead-u", encode(bus_message("u6", "lead-u", "x")), None)])
    assert await Consumer(client, group="ug", shards=SHARDS, handler=Recorder()).drain() == 2
    assert handling_spans(spans, "ug") == []
    await client.aclose()


async def test_a_batch_without_trace_context_starts_its_own_trace(redis_url: str,
                                                                 spans: InMemorySpanExporter) -> None:
    client = aioredis.from_url(redis_url)
    spans.clear()
    await Publisher(client, SHARDS).publish([bus_message("m1", "lead-n", "x")])
    assert await Consumer(client, group="ng", shards=SHARDS, handler=Recorder()).drain() == 1
    [span] = handling_spans(spans, "ng")
    assert span.parent is None and list(span.links) == []
    assert dict(span.attributes or {}) == {"messaging.system": "redis", "messages": 1, "nurture.lead_id": "lead-n",
                                           "nurture.event_id": "m1"}
    await client.aclose()


async def test_at_most_fifty_requests_are_joined_or_linked(redis_url: str, spans: InMemorySpanExporter) -> None:
    client = aioredis.from_url(redis_url)
    carriers = [carrier_of(f"req-{n}") for n in range(52)]
    spans.clear()
    await Publisher(client, SHARDS).publish_encoded(
        [("lead-c", encode(bus_message(f"m{n}", "lead-c", "x")), c) for n, (c, _) in enumerate(carriers)])
    assert await Consumer(client, group="cg", shards=SHARDS, handler=Recorder()).drain() == 52
    [span] = handling_spans(spans, "cg")
    assert span.parent is not None and span.parent.span_id == carriers[0][1].span_id
    assert [link.context.span_id for link in span.links] == [ctx.span_id for _, ctx in carriers[1:50]]
    await client.aclose()


async def test_the_trace_rides_beside_the_message_only_when_there_is_one(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    carrier, _ = carrier_of("req")
    when = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    await Publisher(client, SHARDS).publish_encoded([("lead-f", encode(bus_message("m1", "lead-f", "x", at=when)),
                                                      carrier),
                                                     ("lead-f", encode(bus_message("m2", "lead-f", "x")), None)])
    await Publisher(client, SHARDS).publish_encoded([])
    entries = await client.xrange(stream_key(shard_of("lead-f", SHARDS)))
    assert [sorted(fields) for _, fields in entries] == [[b"m", b"t"], [b"m"]]
    assert entries[0][1][b"t"] == carrier.encode()
    assert decode(entries[0][1][b"m"]).properties["at"] == str(when)   # values JSON cannot hold travel as text
    for shard in range(SHARDS):
        if shard != shard_of("lead-f", SHARDS):
            assert await client.exists(stream_key(shard)) == 0
    await client.aclose()


async def test_a_malformed_entry_is_acknowledged_and_dropped(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    client = aioredis.from_url(redis_url)
    stream = stream_key(shard_of("lead-m", SHARDS))
    await Publisher(client, SHARDS).publish([bus_message("ok1", "lead-m", "x")])
    await client.xadd(stream, {"x": "no message field"})
    await client.xadd(stream, {"m": "{not json"})
    await Publisher(client, SHARDS).publish([bus_message("ok2", "lead-m", "x")])
    handler = Recorder()
    consumer = Consumer(client, group="mg", shards=SHARDS, handler=handler)
    assert await consumer.drain() == 4
    assert [[m.id for m in call] for call in handler.calls] == [["ok1", "ok2"]]
    assert (await client.xpending(stream, "mg"))["pending"] == 0
    assert await consumer.drain() == 0 and len(handler.calls) == 1
    dropped = [r for r in caplog.records if r.getMessage().startswith("bus mg: dropping malformed entry")]
    assert len(dropped) == 2 and {r.levelname for r in dropped} == {"ERROR"}
    await client.aclose()


async def test_a_failed_batch_across_shards_is_handled_shard_by_shard(redis_url: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    client = aioredis.from_url(redis_url)
    leads = {shard_of(f"lead-{i}", SHARDS): f"lead-{i}" for i in range(40)}
    first, second = leads[0], leads[1]
    await Publisher(client, SHARDS).publish([bus_message("ok", first, "x"), bus_message("bad", second, "poison")])
    calls: list[list[str]] = []

    async def handler(messages: list[BusMessage]) -> None:
        calls.append([m.id for m in messages])
        if any(m.type == "poison" for m in messages):
            raise ValueError("cannot handle this")

    assert await Consumer(client, group="sg", shards=SHARDS, handler=handler).drain() == 1
    assert calls == [["ok", "bad"], ["ok"], ["bad"]]
    [warning] = [r for r in caplog.records if r.getMessage() == "bus sg: a batch across 2 shards failed; handling "
                 "shard by shard"]
    assert warning.levelname == "WARNING" and warning.exc_info is not None   # with the handler's traceback
    await client.aclose()


async def test_shards_handled_one_by_one_are_all_counted(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    leads = {shard_of(f"lead-{i}", SHARDS): f"lead-{i}" for i in range(40)}
    await Publisher(client, SHARDS).publish([bus_message("a", leads[0], "x"), bus_message("b", leads[1], "x"),
                                             bus_message("c", leads[2], "x")])
    calls: list[list[str]] = []

    async def fails_once(messages: list[BusMessage]) -> None:
        calls.append([m.id for m in messages])
        if len(calls) == 1:
            raise ValueError("the whole batch fails once")

    assert await Consumer(client, group="og", shards=SHARDS, handler=fails_once).drain() == 3
    assert calls == [["a", "b", "c"], ["a"], ["b"], ["c"]]
    await client.aclose()


async def test_the_consumer_loop_survives_an_error_and_says_so(redis_url: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    client = aioredis.from_url(redis_url)
    consumer = Consumer(client, group="lg", shards=SHARDS, handler=Recorder(), linger=0)
    task = asyncio.create_task(consumer.run(idle_block_ms=50))
    for _ in range(100):   # until the groups exist and the loop reads
        if all([await client.exists(stream_key(s)) for s in range(SHARDS)]):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    # A shard's key holds something that is not a stream: reading it (and making its group again) fails.
    await client.delete(*[stream_key(s) for s in range(SHARDS)])
    await client.set(stream_key(0), "not a stream")
    for _ in range(200):
        if any("consumer loop error" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.wait([task], timeout=5)
    [error, *_] = [r for r in caplog.records if r.name == "nurture.bus" and r.levelname == "ERROR"]
    assert error.getMessage() == "bus lg: consumer loop error; retrying" and error.exc_info is not None
    await client.delete(stream_key(0))
    await client.aclose()


async def test_a_read_takes_at_most_a_batch(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    await Publisher(client, SHARDS).publish([bus_message(f"b{n}", "lead-b", "x") for n in range(5)])
    handler = Recorder()
    assert await Consumer(client, group="bg", shards=SHARDS, handler=handler, batch=2).drain() == 5
    assert [[m.id for m in call] for call in handler.calls] == [["b0", "b1"], ["b2", "b3"], ["b4"]]
    await client.aclose()


async def test_a_dead_letter_keeps_at_most_64_kib_of_its_messages(redis_url: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    client = aioredis.from_url(redis_url)
    await Publisher(client, SHARDS).publish([bus_message("big", "lead-d", "poison", blob="x" * 70_000)])

    async def refuse(messages: list[BusMessage]) -> None:
        raise ValueError("cannot handle this")

    consumer = Consumer(client, group="dg", shards=SHARDS, handler=refuse)
    for _ in range(MAX_DELIVERIES):
        await consumer.drain()
    [(_, dead)] = await client.xrange("nurture:bus-dead:{dg}")
    assert len(dead[b"m"]) == 65536 and dead[b"m"].startswith(b'[{"id": "big"')
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "nurture.bus"]
    assert said.count(("ERROR", "bus dg: handler failed on 1 messages")) == MAX_DELIVERIES
    assert ("ERROR", f"bus dg: dead-lettered 1 entries after {MAX_DELIVERIES} failures") in said
    await client.aclose()


async def test_one_failure_short_of_the_limit_is_not_dead_lettered(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    await Publisher(client, SHARDS).publish([bus_message("f1", "lead-f", "x")])
    attempts: list[int] = []

    async def flaky(messages: list[BusMessage]) -> None:
        attempts.append(len(messages))
        if len(attempts) < MAX_DELIVERIES:
            raise ValueError("not yet")

    consumer = Consumer(client, group="fg", shards=SHARDS, handler=flaky)
    for _ in range(MAX_DELIVERIES + 2):
        await consumer.drain()
    assert len(attempts) == MAX_DELIVERIES
    assert await client.xlen("nurture:bus-dead:{fg}") == 0
    assert (await client.xpending(stream_key(shard_of("lead-f", SHARDS)), "fg"))["pending"] == 0
    await client.aclose()


async def test_the_running_consumer_reads_a_failed_batch_again(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    done = asyncio.Event()
    attempts: list[str] = []

    async def once_failing(messages: list[BusMessage]) -> None:
        attempts.extend(m.id for m in messages)
        if len(attempts) == 1:
            raise ValueError("first time fails")
        done.set()

    consumer = Consumer(client, group="rg", shards=SHARDS, handler=once_failing, linger=0)
    task = asyncio.create_task(consumer.run(idle_block_ms=50))
    await Publisher(client, SHARDS).publish([bus_message("r1", "lead-r", "x")])
    await asyncio.wait_for(done.wait(), 20)
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert attempts == ["r1", "r1"]
    assert (await client.xpending(stream_key(shard_of("lead-r", SHARDS)), "rg"))["pending"] == 0
    await client.aclose()


async def test_a_consumer_whose_groups_vanished_makes_them_again_and_reads_on(redis_url: str) -> None:
    # Redis restarted without its data (or flushed): the streams and the group are gone.
    client = aioredis.from_url(redis_url)
    seen: list[str] = []
    arrived = asyncio.Event()

    async def handler(messages: list[BusMessage]) -> None:
        seen.extend(m.id for m in messages)
        arrived.set()

    consumer = Consumer(client, group="vg", shards=SHARDS, handler=handler, linger=0)
    task = asyncio.create_task(consumer.run(idle_block_ms=50))
    await Publisher(client, SHARDS).publish([bus_message("v1", "lead-v", "x")])
    await asyncio.wait_for(arrived.wait(), 20)
    arrived.clear()
    await client.delete(*[stream_key(s) for s in range(SHARDS)])
    await Publisher(client, SHARDS).publish([bus_message("v2", "lead-v", "x")])
    await asyncio.wait_for(arrived.wait(), 20)
    assert seen == ["v1", "v2"] and not task.done()
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert (await client.xpending(stream_key(shard_of("lead-v", SHARDS)), "vg"))["pending"] == 0
    await client.aclose()


async def test_a_group_that_cannot_be_created_is_an_error(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    await client.set(stream_key(1), "not a stream")
    with pytest.raises(ResponseError):
        await Consumer(client, group="eg", shards=SHARDS, handler=Recorder()).ensure_groups()
    await client.delete(stream_key(1))
    consumer = Consumer(client, group="eg", shards=SHARDS, handler=Recorder())
    await consumer.ensure_groups()
    await Consumer(client, group="eg", shards=SHARDS, handler=Recorder()).ensure_groups()  # BUSYGROUP: fine
    for shard in range(SHARDS):
        assert [g["name"] for g in await client.xinfo_groups(stream_key(shard))] == [b"eg"]
    await client.aclose()


@pytest.mark.parametrize(("replica", "suffix"), [(None, "0"), ("2", "2")])
async def test_a_restarted_consumer_of_the_same_slot_reads_its_own_pending_entries_again(
        redis_url: str, monkeypatch: pytest.MonkeyPatch, replica: str | None, suffix: str) -> None:
    import socket

    if replica is None:
        monkeypatch.delenv("NURTURE_REPLICA", raising=False)
    else:
        monkeypatch.setenv("NURTURE_REPLICA", replica)
    client = aioredis.from_url(redis_url)
    await Publisher(client, SHARDS).publish([bus_message("p1", "lead-p", "x")])

    async def crash(messages: list[BusMessage]) -> None:
        raise ValueError("the process dies before acknowledging")

    await Consumer(client, group="pg", shards=SHARDS, handler=crash).drain()
    stream = stream_key(shard_of("lead-p", SHARDS))
    [pending] = await client.xpending_range(stream, "pg", min="-", max="+", count=10)
    assert pending["consumer"] == f"pg-{socket.gethostname()}-{suffix}".encode()
    handler = Recorder()
    assert await Consumer(client, group="pg", shards=SHARDS, handler=handler).drain() == 1   # the restart
    assert [[m.id for m in call] for call in handler.calls] == [["p1"]]
    await client.aclose()
