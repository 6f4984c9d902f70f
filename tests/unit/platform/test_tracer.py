"""The mesh's tracer (nurture.telemetry): a span that is not recorded costs its processors nothing and
carries the head's decision on; a recorded one keeps what is set on it until it ends, records the
exception that left its block, and reaches the JSON-lines file and the OTLP encoder whole."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from nurture import telemetry
from nurture.settings import load_settings


class _Calls(SpanProcessor):  # type: ignore[misc]  # the SDK's base is untyped for mypy
    """Every processor call, by kind."""

    def __init__(self) -> None:
        self.started: list[object] = []
        self.ended: list[ReadableSpan] = []

    def on_start(self, span: object, parent_context: otel_context.Context | None = None) -> None:
        self.started.append(span)

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)


def _provider(ratio: float) -> tuple[trace.Tracer, _Calls, InMemorySpanExporter]:
    made = telemetry.provider("t", load_settings(environ={}, trace_sample_ratio=ratio))
    calls, exporter = _Calls(), InMemorySpanExporter()
    made.add_span_processor(calls)
    made.add_span_processor(SimpleSpanProcessor(exporter))
    return made.get_tracer("t"), calls, exporter


def _ctx(trace_id: int, sampled: bool) -> trace.SpanContext:
    flags = trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled else trace.TraceFlags.DEFAULT)
    return trace.SpanContext(trace_id=trace_id, span_id=0xABC, is_remote=True, trace_flags=flags)


def test_an_unsampled_trace_reaches_no_processor_and_carries_its_decision_on() -> None:
    tracer, calls, _ = _provider(0.0)
    with tracer.start_as_current_span("root", attributes={"a": 1}) as root:
        assert not root.is_recording() and not isinstance(root, telemetry.RecordedSpan)
        current = trace.get_current_span().get_span_context()
        assert current == root.get_span_context() and current.is_valid and not current.trace_flags.sampled
        with tracer.start_as_current_span("child") as child:  # follows the root, in its trace
            assert not child.is_recording()
            assert child.get_span_context().trace_id == current.trace_id
            assert child.get_span_context().span_id != current.span_id
    # A recording process (ratio 1) follows an unsampled caller too.
    tracer, calls_at_1, _ = _provider(1.0)
    parent = trace.set_span_in_context(trace.NonRecordingSpan(_ctx(0x5EED, sampled=False)))
    with tracer.start_as_current_span("server", context=parent) as span:
        assert not span.is_recording() and span.get_span_context().trace_id == 0x5EED
    assert calls.started == calls.ended == calls_at_1.started == calls_at_1.ended == []


def test_a_recorded_span_keeps_what_is_set_until_it_ends() -> None:
    tracer, calls, exporter = _provider(0.0)  # the parent's decision, not this process's ratio
    links = [trace.Link(_ctx(0x11, sampled=True)), trace.Link(trace.INVALID_SPAN_CONTEXT)]
    parent = trace.set_span_in_context(trace.NonRecordingSpan(_ctx(0x5EED, sampled=True)))
    with tracer.start_as_current_span("GET", context=parent, kind=trace.SpanKind.SERVER,
                                      attributes={"a": 1, "none": None}, links=links) as span:
        assert isinstance(span, telemetry.RecordedSpan) and calls.started == [span]
        assert trace.get_current_span() is span
        span.update_name("GET /v1/leads")
        span.set_attributes({"http.method": "GET", "list": ["x", "y"]})
        span.set_status(trace.StatusCode.OK)
        span.set_status(trace.Status(trace.StatusCode.ERROR, "ignored: OK stays"))
    assert trace.get_current_span() is not span
    span.set_attribute("late", 1)
    span.update_name("late")
    span.end()  # a second end: no second export
    [done] = exporter.get_finished_spans()
    assert calls.ended == [done] and done is span
    assert done.name == "GET /v1/leads" and done.kind == trace.SpanKind.SERVER
    assert dict(done.attributes or {}) == {"a": 1, "http.method": "GET", "list": ["x", "y"]}
    assert done.parent is not None and done.parent.span_id == 0xABC
    assert done.context.trace_id == 0x5EED and done.context.trace_flags.sampled
    assert [lk.context.trace_id for lk in done.links] == [0x11]
    assert done.status.status_code == trace.StatusCode.OK
    assert done.start_time is not None and done.end_time is not None and done.start_time <= done.end_time


def test_an_error_leaving_the_block_is_recorded_and_a_cancellation_is_not() -> None:
    tracer, _, exporter = _provider(1.0)
    with pytest.raises(ValueError), tracer.start_as_current_span("fails"):
        raise ValueError("bad input")
    with pytest.raises(asyncio.CancelledError), tracer.start_as_current_span("cancelled"):
        raise asyncio.CancelledError
    with pytest.raises(KeyError), tracer.start_span("used as its own block"):
        raise KeyError("k")
    fails, cancelled, own = exporter.get_finished_spans()
    assert fails.status.status_code == trace.StatusCode.ERROR
    assert fails.status.description == "ValueError: bad input"
    [event] = fails.events
    assert event.name == "exception" and (event.attributes or {})["exception.type"] == "ValueError"
    assert "bad input" in str((event.attributes or {})["exception.stacktrace"])
    assert cancelled.status.status_code == trace.StatusCode.UNSET and not cancelled.events
    assert own.status.status_code == trace.StatusCode.ERROR and [e.name for e in own.events] == ["exception"]


def test_recorded_spans_reach_the_file_and_the_otlp_encoder_whole(tmp_path: Path) -> None:
    tracer, _, exporter = _provider(1.0)
    link = trace.Link(_ctx(0x22, sampled=True))
    with tracer.start_as_current_span("root", attributes={"k": "v"}) as root, \
            tracer.start_as_current_span("child", links=[link]) as child:
        child.set_attribute("db.statements", ["INSERT x", "UPDATE y"])
    finished = exporter.get_finished_spans()
    path = tmp_path / "traces" / "t.jsonl"
    telemetry.JsonLinesExporter(path).export(finished)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    by_name = {line["name"]: line for line in lines}
    trace_id = f"{root.get_span_context().trace_id:032x}"
    assert by_name["child"]["trace_id"] == by_name["root"]["trace_id"] == trace_id
    assert by_name["child"]["parent_id"] == by_name["root"]["span_id"] == f"{root.get_span_context().span_id:016x}"
    assert by_name["root"]["parent_id"] is None and by_name["root"]["attributes"] == {"k": "v"}
    assert by_name["child"]["attributes"] == {"db.statements": ["INSERT x", "UPDATE y"]}
    assert by_name["child"]["links"] == [f"{0x22:032x}"] and by_name["root"]["service"] == "nurture-t"
    encoded = encode_spans(finished)
    [scope_spans] = encoded.resource_spans[0].scope_spans
    proto = {s.name: s for s in scope_spans.spans}
    assert proto["child"].parent_span_id == root.get_span_context().span_id.to_bytes(8, "big")
    assert [v.string_value for v in proto["child"].attributes[0].value.array_value.values] == ["INSERT x", "UPDATE y"]
    assert proto["child"].links[0].trace_id == (0x22).to_bytes(16, "big")


def test_the_file_names_every_status_and_lists_no_links_or_attributes_for_a_span_without(tmp_path: Path) -> None:
    tracer, _, exporter = _provider(1.0)
    with tracer.start_as_current_span("unset"):
        pass
    with tracer.start_as_current_span("ok") as ok:
        ok.set_status(trace.StatusCode.OK)
    with pytest.raises(ValueError), tracer.start_as_current_span("error"):
        raise ValueError("bad")
    path = tmp_path / "t.jsonl"
    telemetry.JsonLinesExporter(path).export(exporter.get_finished_spans())
    lines = {line["name"]: line for line in map(json.loads, path.read_text().splitlines())}
    assert {name: line["status"] for name, line in lines.items()} == {"unset": "UNSET", "ok": "OK", "error": "ERROR"}
    assert lines["unset"]["links"] == [] and lines["unset"]["attributes"] == {}


def test_a_lone_processor_is_called_directly_and_still_hears_every_start_it_asks_for(tmp_path: Path) -> None:
    """A provider with one processor hands spans to it without the multi-processor; one whose `on_start`
    does something still gets it, and the process's own (batch, to the file) exports what ends."""
    made = telemetry.provider("t", load_settings(environ={}, trace_sample_ratio=1.0))
    calls = _Calls()
    made.add_span_processor(calls)
    with made.get_tracer("t").start_as_current_span("one") as span:
        assert calls.started == [span]
    assert calls.ended == [span]
    batched = telemetry.provider("lone", load_settings(environ={}, trace_sample_ratio=1.0))
    batched.add_span_processor(BatchSpanProcessor(telemetry.JsonLinesExporter(tmp_path / "traces" / "lone.jsonl")))
    with batched.get_tracer("t").start_as_current_span("batched"):
        pass
    batched.force_flush()
    [line] = [json.loads(x) for x in (tmp_path / "traces" / "lone.jsonl").read_text().splitlines()]
    assert line["name"] == "batched" and line["status"] == "UNSET"
    batched.shutdown()


class _Parents(_Calls):
    """Also keeps the parent span each start was told of (through its Context)."""

    def __init__(self) -> None:
        super().__init__()
        self.parents: list[trace.SpanContext] = []

    def on_start(self, span: object, parent_context: otel_context.Context | None = None) -> None:
        super().on_start(span, parent_context)
        self.parents.append(trace.get_current_span(parent_context).get_span_context())


@pytest.mark.parametrize("through_module", [False, True])
def test_a_child_started_from_its_parents_span_context_is_the_one_a_context_would_give(through_module: bool) -> None:
    """`start_child` (the RPC server span's way: the caller's traceparent read into a span context) makes
    what `start_span` under a Context holding that span context makes: the same trace, parent and
    decision, a root when there is none, and a processor that asks for starts is told the parent."""
    made = telemetry.provider("t", load_settings(environ={}, trace_sample_ratio=0.0))
    calls, exporter = _Parents(), InMemorySpanExporter()
    made.add_span_processor(calls)
    made.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = made.get_tracer("t")
    module = telemetry._ModuleTracer("t")
    module._real = tracer

    def child(name: str, parent: trace.SpanContext | None) -> trace.Span:
        if through_module:
            return module.start_child(name, parent, trace.SpanKind.SERVER, {"rpc.method": name})
        assert isinstance(tracer, telemetry._Tracer)
        return tracer.start_child(name, parent, None, trace.SpanKind.SERVER, {"rpc.method": name})

    sampled = _ctx(0x5EED, sampled=True)
    span = child("/a/B", sampled)
    assert span.is_recording() and span.get_span_context().trace_id == 0x5EED
    span.end()
    unsampled = child("/a/C", _ctx(0x5EED, sampled=False))  # the caller's decision, not this ratio's
    assert not unsampled.is_recording() and unsampled.get_span_context().trace_id == 0x5EED
    root = child("/a/D", None)  # no caller's context: a root, sampled by this process's ratio (0)
    assert not root.is_recording() and root.get_span_context().trace_id != 0x5EED
    (finished,) = exporter.get_finished_spans()
    assert finished.parent == sampled and finished.kind == trace.SpanKind.SERVER
    assert finished.attributes == {"rpc.method": "/a/B"}
    assert calls.started == [span] and calls.parents == [sampled]


def test_the_current_span_is_the_one_opentelemetrys_api_sees_both_ways() -> None:
    """`telemetry.current_span` and `Current` (which read and set OpenTelemetry's context variable
    directly) agree with `trace.get_current_span` and `use_span`, nested either way, restore what was
    current, and a block left in another context is logged, not raised (as OpenTelemetry's detach)."""
    assert telemetry._CURRENT is not None  # the default runtime context: the direct path is the one tested
    tracer, _, _ = _provider(1.0)
    assert telemetry.current_span() is trace.get_current_span() is trace.INVALID_SPAN
    with tracer.start_as_current_span("outer") as outer:
        assert telemetry.current_span() is trace.get_current_span() is outer
        inner = tracer.start_span("inner")
        assert inner.parent == outer.get_span_context()  # type: ignore[attr-defined]
        with trace.use_span(inner, end_on_exit=True):
            assert telemetry.current_span() is inner
            with telemetry.as_current(tracer.start_span("third")) as third:
                assert trace.get_current_span() is third
                assert third.parent == inner.get_span_context()  # type: ignore[attr-defined]
            assert telemetry.current_span() is trace.get_current_span() is inner
        assert telemetry.current_span() is outer
    assert telemetry.current_span() is trace.INVALID_SPAN

    async def main() -> None:
        current = telemetry.as_current(tracer.start_span("moved"))
        current.__enter__()
        await asyncio.create_task(_leave(current))  # left in another task's context: its token is foreign

    async def _leave(current: telemetry.Current) -> None:
        current.__exit__(None, None, None)

    asyncio.run(main())


def test_the_file_writes_the_sdks_own_spans_as_it_writes_the_mesh_spans(tmp_path: Path) -> None:
    """The exporter reads the mesh's spans field by field and any other ReadableSpan through its
    properties: a span of OpenTelemetry's own tracer with the same content makes the same line."""
    from opentelemetry.sdk.trace import TracerProvider

    sdk = TracerProvider(resource=telemetry.provider("t", load_settings(environ={})).resource)
    sdk_spans = InMemorySpanExporter()
    sdk.add_span_processor(SimpleSpanProcessor(sdk_spans))
    tracer, _, mesh_spans = _provider(1.0)
    link = trace.Link(_ctx(0x22, sampled=True))
    for made in (sdk.get_tracer("t"), tracer):
        with made.start_as_current_span("root", attributes={"k": "v"}), \
                made.start_as_current_span("child", links=[link]) as child:
            child.set_status(trace.StatusCode.OK)
    spans = [*sdk_spans.get_finished_spans(), *mesh_spans.get_finished_spans()]
    assert [type(s) is telemetry.RecordedSpan for s in spans] == [False, False, True, True]
    path = tmp_path / "t.jsonl"
    telemetry.JsonLinesExporter(path).export(spans)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        assert line["trace_id"] and line["span_id"] and line["end_ns"] >= line["start_ns"] > 0
    assert lines[0]["parent_id"] == lines[1]["span_id"] and lines[2]["parent_id"] == lines[3]["span_id"]
    kept = ("name", "service", "status", "attributes", "links")
    assert [{k: line[k] for k in kept} for line in lines[:2]] == [{k: line[k] for k in kept} for line in lines[2:]]
    assert lines[0]["links"] == [f"{0x22:032x}"] and lines[1]["attributes"] == {"k": "v"}


class _CountingIds(RandomIdGenerator):
    """Span ids 1, 2, 3...: a generator of the provider's own, set after it was made."""

    def __init__(self) -> None:
        self.last = 0

    def generate_span_id(self) -> int:
        self.last += 1
        return self.last


def test_span_ids_come_from_the_providers_generator_unless_it_is_opentelemetrys_random_one() -> None:
    """The mesh's tracer draws OpenTelemetry's random span ids itself; any other generator (even one
    derived from it, or one set after the provider was made) is asked for every span's id."""
    made = telemetry.provider("t", load_settings(environ={}, trace_sample_ratio=1.0))
    tracer = made.get_tracer("t")
    drawn = {tracer.start_span("r").get_span_context().span_id for _ in range(50)}
    assert len(drawn) == 50 and 0 not in drawn
    made.id_generator = _CountingIds()
    root = tracer.start_span("root")
    child = tracer.start_child("child", root.get_span_context())  # type: ignore[attr-defined]
    assert (root.get_span_context().span_id, child.get_span_context().span_id) == (1, 2)
    assert child.get_span_context().trace_id == root.get_span_context().trace_id


class _WideIds(RandomIdGenerator):  # type: ignore[misc]  # the SDK's base is untyped for mypy
    """Ids out of W3C's range: a span with one is not valid, whoever builds its context."""

    def generate_span_id(self) -> int:
        return 2**64

    def generate_trace_id(self) -> int:
        return 2**128


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_a_span_context_made_by_the_tracer_is_the_one_opentelemetry_would_make(ratio: float) -> None:
    """The mesh's tracer builds a span's SpanContext tuple itself (without its Python `__new__`): the
    same tuple, validity and default trace state as OpenTelemetry's constructor gives, for a root and a
    child, sampled or not, a parent's trace state carried; ids out of range still come out invalid."""
    made = telemetry.provider("t", load_settings(environ={}, trace_sample_ratio=ratio))
    tracer = made.get_tracer("t")
    root = tracer.start_span("root").get_span_context()
    state = trace.TraceState([("k", "v")])
    parent = trace.SpanContext(0xABC, 0xDEF, True, trace.TraceFlags(1 if ratio else 0), state)
    child = tracer.start_child("child", parent).get_span_context()  # type: ignore[attr-defined]
    for ctx in (root, child):
        rebuilt = trace.SpanContext(ctx.trace_id, ctx.span_id, False, ctx.trace_flags, ctx.trace_state)
        assert tuple(ctx) == tuple(rebuilt) and ctx.is_valid and type(ctx) is trace.SpanContext
    assert root.trace_state is trace.DEFAULT_TRACE_STATE and child.trace_state is state
    made.id_generator = _WideIds()
    wide = tracer.start_span("wide").get_span_context()
    assert not wide.is_valid and (wide.trace_id, wide.span_id) == (2**128, 2**64)


class _OwnBatch(BatchSpanProcessor):  # type: ignore[misc]  # the SDK's base is untyped for mypy
    """A processor derived from the batch one: its own `on_end` must still be called."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        super().__init__(exporter)
        self.ended: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)
        super().on_end(span)


def test_a_recorded_span_goes_straight_to_a_lone_batch_processors_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """With OpenTelemetry's own BatchSpanProcessor as the one processor, a recorded span that ends is put
    on its queue without its `on_end` (whose sampled check a recorded span always passes): it is still
    exported, and one that ends after the processor was shut down is dropped as `on_end` would drop it.
    A processor of another type, even one derived from the batch one, gets `on_end`."""
    on_end_calls: list[ReadableSpan] = []
    original = BatchSpanProcessor.on_end

    def spy(self: BatchSpanProcessor, span: ReadableSpan) -> None:
        on_end_calls.append(span)
        original(self, span)

    monkeypatch.setattr(BatchSpanProcessor, "on_end", spy)
    made = telemetry.provider("t", load_settings(environ={}, trace_sample_ratio=1.0))
    exporter = InMemorySpanExporter()
    made.add_span_processor(BatchSpanProcessor(exporter))
    tracer = made.get_tracer("t")
    with tracer.start_as_current_span("queued"):
        pass
    made.force_flush()
    assert [s.name for s in exporter.get_finished_spans()] == ["queued"] and on_end_calls == []
    late = tracer.start_span("late")
    made.shutdown()
    late.end()  # after the shutdown: dropped, not raised
    assert [s.name for s in exporter.get_finished_spans()] == ["queued"]

    derived = telemetry.provider("t", load_settings(environ={}, trace_sample_ratio=1.0))
    own = _OwnBatch(InMemorySpanExporter())
    derived.add_span_processor(own)
    with derived.get_tracer("t").start_as_current_span("through on_end") as span:
        pass
    assert own.ended == [span]
    derived.shutdown()
