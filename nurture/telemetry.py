"""OpenTelemetry for every process: one provider, one exporter, spans for SQL and Redis.

Spans go over OTLP/gRPC when `NURTURE_OTLP_ENDPOINT` is set, otherwise to a JSON-lines file under
`<data_dir>/traces/<service>.jsonl` (`<service>-<replica>.jsonl` for a replica other than 0), so a local
run keeps its traces without a collector; either way through a BatchSpanProcessor (a thread exports
batches; a finished span costs the request only a queue append).

Sampling is decided once, at the head: a span without a parent (the gateway's request span, a timer
or sweep that starts work of its own) is recorded for `NURTURE_TRACE_SAMPLE_RATIO` of trace ids, and
every span with a parent follows its parent's decision, which travels in the W3C `traceparent` flags
(gRPC metadata, each event's own `Event.traceparent`, the bus entry's `t` field). So a trace is whole
in every process or absent from all of them. Work done for several traces at once (a group commit, a
bus batch) joins a sampled one (`batch_parent`).

The spans themselves are the mesh's own (`MeshTracerProvider`: OpenTelemetry's provider, processors and
exporters with a lighter tracer and span). The decision is one comparison at the root and a flag read
below it, an unsampled span is only its ids (no processor sees it), and a recorded span is a plain
object handed to the processors as it ends: OpenTelemetry's own tracer spent 55-70 µs of CPU a
recorded span (sampler objects, a lock and a validated mapping per span, a copy at its end), which
made recording every call cost about a third of a small RPC's throughput (docs/CAPACITY.md).

SQL spans (one per transaction) come from SQLAlchemy's connection events and Redis spans from
`redis_span`; both are made only inside a recording span, so an unsampled event costs them nothing
(the stock instrumentations were not used: see nurture/rpc.py).
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from random import getrandbits as _getrandbits
from time import time_ns
from types import TracebackType
from typing import cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.util.types import Attributes, AttributeValue
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext, ExecutionContext
from sqlalchemy.engine.interfaces import DBAPICursor

from nurture import jsoncodec
from nurture.settings import Settings

_configured = False


_UNSET_CODE, _ERROR_CODE = trace.StatusCode.UNSET, trace.StatusCode.ERROR


class JsonLinesExporter(SpanExporter):
    """Appends one JSON object per finished span to a file (the local run's trace store)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # On the exporter thread, but under the same GIL as the requests: every µs a span costs here is
        # taken from them (every call of the mesh ends two spans). Every span of a process shares its
        # resource, so its service name is looked up once a batch; the status is named by identity (an
        # enum's `.name` is a descriptor call), links are listed only when there are any, and the
        # attributes are copied into a dict (what orjson encodes) without the empty one made for none.
        lines = []
        resource: Resource | None = None
        service: AttributeValue | None = None
        for span in spans:
            # The mesh's own spans are read field by field (each of ReadableSpan's properties is a call;
            # an exported span was read through ten of them); any other ReadableSpan through them.
            fields: tuple[Resource, trace.SpanContext | None, trace.SpanContext | None, trace.Status,
                          Mapping[str, AttributeValue] | None, Sequence[trace.Link], str, int | None, int | None]
            if type(span) is RecordedSpan:
                fields = (span._resource, span._context, span._parent, span._status, span._attributes, span._links,
                          span._name, span._start_time, span._end_time)
            else:
                fields = (span.resource, span.context, span.parent, span.status, span.attributes, span.links,
                          span.name, span.start_time, span.end_time)
            span_resource, ctx, parent, status, attributes, links, name, start_ns, end_ns = fields
            if span_resource is not resource:
                resource = span_resource
                service = resource.attributes.get("service.name")
            code = status.status_code
            lines.append(
                jsoncodec.dumps(
                    {
                        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
                        "span_id": f"{ctx.span_id:016x}" if ctx else None,
                        "parent_id": f"{parent.span_id:016x}" if parent else None,
                        "name": name,
                        "service": service,
                        "start_ns": start_ns,
                        "end_ns": end_ns,
                        "status": "UNSET" if code is _UNSET_CODE else "ERROR" if code is _ERROR_CODE else "OK",
                        # (a tuple is a JSON array, as a list is)
                        "attributes": dict(attributes) if attributes else {},
                        # The traces of the other events a batch span did work for (batch_parent).
                        "links": [f"{link.context.trace_id:032x}" for link in links] if links else [],
                    }
                )
            )
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


# Spans waiting for the export thread. The SDK's 2,048 filled in a fraction of a second at a few thousand
# events a second (each makes about ten spans in scoring alone), and a span dropped there leaves a
# sampled trace with a hole; 64k spans of a few hundred bytes each is a bounded few tens of MB.
MAX_QUEUED_SPANS = 65_536
EXPORT_BATCH = 2_048


class HeadSampler(Sampler):
    """Head sampling: a root span is recorded for `ratio` of trace ids (by the id, as OpenTelemetry's
    TraceIdRatioBased decides, so any process deciding on the same root decides alike); a span with a
    parent follows the parent's flag. The mesh's tracer asks `root` directly (one comparison);
    `should_sample` is the same rule for OpenTelemetry's own tracer."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self._bound = TraceIdRatioBased.get_bound_for_rate(min(ratio, 1.0))

    def root(self, trace_id: int) -> bool:
        """Whether a trace starting here with `trace_id` is recorded."""
        return trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < self._bound

    def should_sample(self, parent_context: otel_context.Context | None, trace_id: int, name: str,
                      kind: trace.SpanKind | None = None, attributes: Attributes = None,
                      links: Sequence[trace.Link] | None = None,
                      trace_state: trace.TraceState | None = None) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        sampled = parent.trace_flags.sampled if parent.is_valid else self.root(trace_id)
        return SamplingResult(Decision.RECORD_AND_SAMPLE if sampled else Decision.DROP, None,
                              parent.trace_state if parent.is_valid else None)

    def get_description(self) -> str:
        return f"HeadSampler{{{self.ratio}}}"


def sampler(ratio: float) -> HeadSampler:
    return HeadSampler(ratio)


# What one span keeps at most (OpenTelemetry's defaults): the mesh's spans stay far below, but a span is
# bounded whatever code sets on it.
MAX_SPAN_ATTRIBUTES = MAX_SPAN_EVENTS = MAX_SPAN_LINKS = 128
_UNSET = trace.Status(trace.StatusCode.UNSET)
_RANDOM = trace.TraceFlags.RANDOM_TRACE_ID
_SAMPLED = trace.TraceFlags.SAMPLED
_NO_STATE = trace.DEFAULT_TRACE_STATE
_MAX_TRACE_ID, _MAX_SPAN_ID = 2**128 - 1, 2**64 - 1
_new_tuple = tuple.__new__


class RecordedSpan(trace.Span, ReadableSpan):
    """A recorded span, as light as the mesh can make it: OpenTelemetry's own span takes a lock per
    span and per change, validates every attribute into a bounded mapping, and copies itself at its end
    for the processors; measured at 55-70 µs of CPU a span with its export, which made recording every
    call cost a third of a small RPC's throughput. This one keeps its attributes in a plain dict (the mesh
    sets values of the types OpenTelemetry takes; None is dropped, as it does), is used from one thread
    at a time (a span belongs to the task or thread that started it), and is handed to the processors
    itself when it ends: nothing changes it after that (every change to an ended span is ignored). It
    is a ReadableSpan, so OpenTelemetry's exporters and processors take it as they take their own."""

    def __init__(self, name: str, context: trace.SpanContext, parent: trace.SpanContext | None,
                 resource: Resource, attributes: Attributes, links: Sequence[trace.Link], kind: trace.SpanKind,
                 ended: Callable[[ReadableSpan], None], scope: InstrumentationScope, start_time: int,
                 record_exception: bool, set_status_on_exception: bool) -> None:
        # ReadableSpan's fields, set directly (its __init__ makes a Resource when given none).
        self._name = name
        self._context: trace.SpanContext = context
        self.context = context  # (the processors read it twice a span: an attribute, not a property call)
        self._parent = parent
        self._resource = resource
        kept: dict[str, AttributeValue] = dict(attributes) if attributes else {}
        if None in kept.values() or len(kept) > MAX_SPAN_ATTRIBUTES:  # rare: the set_attribute rules
            kept = dict([(k, v) for k, v in kept.items() if v is not None][:MAX_SPAN_ATTRIBUTES])
        self._attributes: dict[str, AttributeValue] = kept
        self._end_time: int | None = None
        # Most spans have neither: the empty tuple is shared, a list made at the first one.
        self._events: Sequence[Event] = ()
        self._links: Sequence[trace.Link] = (
            [lk for lk in links if lk.context.is_valid][:MAX_SPAN_LINKS] if links else ())
        self._kind = kind
        self._status = _UNSET
        self._start_time = start_time
        self._instrumentation_scope = scope
        self._instrumentation_info = None
        self._ended = ended  # what takes the span when it ends (MeshTracerProvider.ended)
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception

    # ReadableSpan's `context` property, shadowed by the attribute each span sets.
    context: trace.SpanContext = cast(trace.SpanContext, None)

    def get_span_context(self) -> trace.SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        attributes = self._attributes
        if (self._end_time is None and value is not None
                and (key in attributes or len(attributes) < MAX_SPAN_ATTRIBUTES)):
            attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: Attributes = None, timestamp: int | None = None) -> None:
        if self._end_time is None and len(self._events) < MAX_SPAN_EVENTS:
            self._events = [*self._events, Event(name, dict(attributes) if attributes else None, timestamp)]

    def add_link(self, context: trace.SpanContext, attributes: Attributes = None) -> None:
        if self._end_time is None and context.is_valid and len(self._links) < MAX_SPAN_LINKS:
            self._links = [*self._links, trace.Link(context, attributes)]

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: trace.Status | trace.StatusCode, description: str | None = None) -> None:
        """As OpenTelemetry's span: UNSET is ignored, and so is any change once the status is OK."""
        if self._end_time is not None or self._status.status_code is trace.StatusCode.OK:
            return
        if isinstance(status, trace.StatusCode):
            status = trace.Status(status, description)
        if status.status_code is not trace.StatusCode.UNSET:
            self._status = status

    def record_exception(self, exception: BaseException, attributes: Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        kind = type(exception)
        module = kind.__module__
        event: dict[str, AttributeValue] = {
            "exception.type": f"{module}.{kind.__qualname__}" if module and module != "builtins" else kind.__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time if end_time is not None else time_ns()
        self._ended(self)

    def __exit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                 exc_tb: TracebackType | None) -> None:
        if isinstance(exc_val, Exception):
            mark_failed(self, exc_val, self._record_exception, self._set_status_on_exception)
        self.end()


def mark_failed(span: trace.Span, exc: Exception, record: bool = True, set_status: bool = True) -> None:
    """What a span that an exception left gets, as OpenTelemetry's `use_span` does it."""
    if span.is_recording():
        if record:
            span.record_exception(exc)
        if set_status:
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


log = logging.getLogger(__name__)

# The current span, read and made current without OpenTelemetry's layers of calls: `get_current_span` is
# get_value, get_current and the runtime context's get_current, then an ABC isinstance; making a span
# current is set_span_in_context, set_value, get_current, attach and the runtime's attach, and detach two
# calls more. Each RPC did each of them on both sides. When OpenTelemetry's runtime context is its
# ContextVar one (the default; another can be configured through OTEL_PYTHON_CONTEXT), the ContextVar it
# holds is used directly, with the same key for the span; otherwise the API functions are.
_SPAN_KEY = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, Context())))
_runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
_CURRENT = getattr(_runtime, "_current_context", None) if isinstance(_runtime, ContextVarsRuntimeContext) else None


def current_span() -> trace.Span:
    """`trace.get_current_span()`: the current span, INVALID_SPAN when there is none."""
    if _CURRENT is None:
        return trace.get_current_span()
    span = _CURRENT.get().get(_SPAN_KEY)
    # (only set_span_in_context puts anything under this key: a Span; typing.cast would be a call)
    return trace.INVALID_SPAN if span is None else span


# The ids ops search a lead's traces by: set on the span that handles one lead, event or message (a batch
# span gets the list of them, at most MAX_TAGGED_IDS). Only on a recording span: an unsampled one costs
# the is_recording call, as the ids are read lazily (generators) and no span is made for them.
LEAD_ID = "nurture.lead_id"
EVENT_ID = "nurture.event_id"
MESSAGE_ID = "nurture.message_id"
MAX_TAGGED_IDS = 32


def tag_ids(span: trace.Span | None = None, *, lead_ids: Iterable[str] = (), event_ids: Iterable[str] = (),
            message_ids: Iterable[str] = ()) -> None:
    """`nurture.lead_id` / `nurture.event_id` / `nurture.message_id` on `span` (the current one when None)
    if it is recording: a string when the span handled one, a list of the distinct ones (the first
    MAX_TAGGED_IDS) when it handled a batch; empty ids are left out."""
    if span is None:
        span = current_span()
    if not span.is_recording():
        return
    for key, ids in ((LEAD_ID, lead_ids), (EVENT_ID, event_ids), (MESSAGE_ID, message_ids)):
        distinct: dict[str, None] = {}
        for one in ids:
            if one:
                distinct[one] = None
                if len(distinct) >= MAX_TAGGED_IDS:
                    break
        if len(distinct) == 1:
            span.set_attribute(key, next(iter(distinct)))
        elif distinct:
            span.set_attribute(key, list(distinct))


class Current:
    """A span made current inside a `with`, marked failed by an Exception and ended after it:
    `start_as_current_span`'s context manager, and `as_current`'s for a span started by hand (the hot
    paths' request and RPC spans, gateway.app and nurture.rpc). One object with two methods, where
    OpenTelemetry's `use_span` is two generator-based context managers in a row."""

    __slots__ = ("_span", "_end", "_record", "_set_status", "_token")

    def __init__(self, span: trace.Span, end: bool, record: bool, set_status: bool) -> None:
        self._span, self._end, self._record, self._set_status = span, end, record, set_status

    def __enter__(self) -> trace.Span:
        if _CURRENT is None:
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        else:  # set_span_in_context and attach, as they do it
            values = _CURRENT.get().copy()
            values[_SPAN_KEY] = self._span
            self._token = _CURRENT.set(Context(values))
        return self._span

    def __exit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                 exc_tb: TracebackType | None) -> None:
        if _CURRENT is None:
            otel_context.detach(self._token)
        else:
            try:
                _CURRENT.reset(self._token)
            except Exception:  # as OpenTelemetry's detach: a token from another context is logged, not raised
                log.exception("Failed to detach context")
        span = self._span
        # Only errors (an Exception), not a cancellation or GeneratorExit, as OpenTelemetry's use_span.
        if isinstance(exc_val, Exception):
            mark_failed(span, exc_val, self._record, self._set_status)
        if self._end:
            span.end()


def as_current(span: trace.Span, end: bool = True) -> Current:
    """`span` current inside a `with`; marked failed by an Exception, and ended after it unless `end`
    is false (a caller's span carried through, which is not ours to end)."""
    return Current(span, end, True, True)


def _parent_of(context: otel_context.Context | None) -> trace.SpanContext:
    """The span context a span started under `context` (None: the current one) is the child of."""
    return (current_span() if context is None else trace.get_current_span(context)).get_span_context()


class _Tracer(trace.Tracer):
    """The mesh's tracer: the head's decision is made once per trace, where it starts (`HeadSampler`),
    and followed by every span under it with no sampler call; a span that is not recorded is a
    NonRecordingSpan carrying the decision (its ids only, no attributes kept, no processor call); a
    recorded one is a RecordedSpan."""

    def __init__(self, provider: MeshTracerProvider, scope: InstrumentationScope) -> None:
        self._provider = provider
        self._scope = scope

    def start_span(self, name: str, context: otel_context.Context | None = None,
                   kind: trace.SpanKind = trace.SpanKind.INTERNAL, attributes: Attributes = None,
                   links: Sequence[trace.Link] | None = (), start_time: int | None = None,
                   record_exception: bool = True, set_status_on_exception: bool = True) -> trace.Span:
        parent = _parent_of(context)
        return self.start_child(name, parent, context, kind, attributes, links, start_time, record_exception,
                                set_status_on_exception)

    def start_child(self, name: str, parent: trace.SpanContext | None, context: otel_context.Context | None = None,
                    kind: trace.SpanKind = trace.SpanKind.INTERNAL, attributes: Attributes = None,
                    links: Sequence[trace.Link] | None = (), start_time: int | None = None,
                    record_exception: bool = True, set_status_on_exception: bool = True) -> trace.Span:
        """`start_span` given the parent's span context itself (None or invalid: a root) rather than a
        Context holding it: a server span's parent arrives as a `traceparent`, and wrapping it in a span
        and a Context only for this to take it out again cost every RPC a dict copy and three objects.
        `context` is only what a processor's `on_start` is told."""
        provider = self._provider
        ids = provider.id_generator
        # The parent unpacked (a SpanContext is a tuple: trace id, span id, remote, flags, state, valid;
        # the layout is checked by test_rpc_handlers.py) and its flag read as a bit, not through four
        # properties; every child span of a call read them.
        if parent is not None and parent[5]:
            trace_id, _, _, flags, state, _ = parent
            sampled = bool(flags & _SAMPLED)
        else:
            parent, state = None, None
            # (as the span id below: OpenTelemetry's random generator's draw inline, any other asked)
            trace_id = (_getrandbits(128) if type(ids) is RandomIdGenerator else 0) or ids.generate_trace_id()
            sampled = provider.head.root(trace_id)
            flags = trace.TraceFlags((_SAMPLED if sampled else 0) | (_RANDOM if provider.random_ids else 0))
        # OpenTelemetry's random generator's span id drawn here (one call, not three); it draws again
        # only for the invalid id 0, as this does through it. Any other generator is asked (the type is
        # read per span: `id_generator` is a public attribute, replaced after the provider is made).
        span_id = (_getrandbits(64) if type(ids) is RandomIdGenerator else 0) or ids.generate_span_id()
        # The SpanContext tuple made directly: its `__new__` (a Python call a span) only fills the default
        # trace state and works out `is_valid`, which holds for ids a generator made (not zero; in range,
        # as the check keeps it).
        if 0 < trace_id <= _MAX_TRACE_ID and 0 < span_id <= _MAX_SPAN_ID:
            span_context = _new_tuple(trace.SpanContext,
                                      (trace_id, span_id, False, flags, _NO_STATE if state is None else state, True))
        else:
            span_context = trace.SpanContext(trace_id, span_id, False, flags, state)
        if not sampled:
            return trace.NonRecordingSpan(span_context)
        processor = provider.processor
        span = RecordedSpan(name, span_context, parent, provider.mesh_resource, attributes, links or (), kind,
                            provider.ended, self._scope, start_time if start_time is not None else time_ns(),
                            record_exception, set_status_on_exception)
        if provider.starts:
            if context is None and parent is not None:  # what the processor would have been told
                context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
            # (a processor is typed for the SDK's span; it takes a RecordedSpan as one: see its docstring)
            processor.on_start(span, parent_context=context)  # type: ignore[arg-type]
        return span

    def start_as_current_span(self, name: str, context: otel_context.Context | None = None,  # type: ignore[override]
                              kind: trace.SpanKind = trace.SpanKind.INTERNAL, attributes: Attributes = None,
                              links: Sequence[trace.Link] | None = (), start_time: int | None = None,
                              record_exception: bool = True, set_status_on_exception: bool = True,
                              end_on_exit: bool = True) -> Current:
        parent = current_span().get_span_context() if context is None else _parent_of(context)
        span = self.start_child(name, parent, context, kind, attributes, links, start_time, record_exception,
                                set_status_on_exception)
        return Current(span, end_on_exit, record_exception, set_status_on_exception)


def _batch_emit(processor: SpanProcessor) -> Callable[[ReadableSpan], None] | None:
    """For OpenTelemetry's own BatchSpanProcessor, the queue's `emit` its `on_end` calls: a recorded span
    of the mesh is sampled by construction, so `on_end`'s check (the span's flags, through two
    properties) is skipped, three Python calls a span. Its batcher is the SDK's internal
    (`_batch_processor`, `emit`), so any other processor, or a version of the SDK without them, gets
    `on_end` as before. `emit` keeps everything else `on_end` did: a queue full or a processor shut down
    drops the span, as it does, and a forked child's queue is reset first."""
    if type(processor) is not BatchSpanProcessor:
        return None
    emit = getattr(getattr(processor, "_batch_processor", None), "emit", None)
    return cast(Callable[[ReadableSpan], None], emit) if callable(emit) else None


# Processors whose `on_start` does nothing (the SDK's base, batch and simple ones): a span's start does
# not call them.
_NO_OP_STARTS = frozenset({SpanProcessor.on_start, BatchSpanProcessor.on_start, SimpleSpanProcessor.on_start})


class MeshTracerProvider(TracerProvider):
    """OpenTelemetry's provider (its processors, resource, shutdown and flush) with the mesh's tracer
    (`_Tracer`) and sampler (`HeadSampler`, which it requires)."""

    def __init__(self, resource: Resource, head: HeadSampler) -> None:
        super().__init__(resource=resource, sampler=head)
        self.head = head
        # The provider's resource (fixed once it is made) as an attribute: `resource` is a property, a call
        # for every recorded span.
        self.mesh_resource = self.resource
        self.random_ids = self.id_generator.is_trace_id_random()
        # What a recorded span is handed to: the provider's own multi-processor, or the one processor
        # added (every process adds one BatchSpanProcessor), called directly rather than through the
        # multi-processor's loop; `starts` is whether any processor does something when a span starts.
        self.processor: SpanProcessor = self._active_span_processor
        self.ended: Callable[[ReadableSpan], None] = self.processor.on_end
        self.starts = False
        self._added: list[SpanProcessor] = []
        self._mesh_tracers: dict[tuple[str, str | None, str | None], _Tracer] = {}
        self._mesh_lock = threading.Lock()

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self._added.append(span_processor)
        self.processor = span_processor if len(self._added) == 1 else self._active_span_processor
        self.ended = _batch_emit(self.processor) or self.processor.on_end
        self.starts = any(type(p).on_start not in _NO_OP_STARTS for p in self._added)

    def get_tracer(self, instrumenting_module_name: str, instrumenting_library_version: str | None = None,
                   schema_url: str | None = None, attributes: Attributes = None) -> trace.Tracer:
        key = (instrumenting_module_name, instrumenting_library_version, schema_url)
        with self._mesh_lock:
            tracer = self._mesh_tracers.get(key)
            if tracer is None:
                scope = InstrumentationScope(instrumenting_module_name, instrumenting_library_version or "",
                                             schema_url, attributes)
                tracer = self._mesh_tracers[key] = _Tracer(self, scope)
        return tracer


class _ModuleTracer(trace.Tracer):
    """A module's tracer, made when the module is imported, usually before `setup` installs the provider:
    the provider's tracer once there is one (until then OpenTelemetry's proxy, which makes nothing).
    `trace.get_tracer` at import gives OpenTelemetry's ProxyTracer instead, whose
    `start_as_current_span` wraps the real one in a generator context manager of its own: 2-4 µs more
    a span, sampled or not."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._real: trace.Tracer | None = None

    def _tracer(self) -> trace.Tracer:
        real = self._real
        if real is None:
            real = trace.get_tracer_provider().get_tracer(self._name)
            if isinstance(real, trace.ProxyTracer):  # no provider yet: ask again next time
                return real
            self._real = real
        return real

    def start_span(self, name: str, context: otel_context.Context | None = None,
                   kind: trace.SpanKind = trace.SpanKind.INTERNAL, attributes: Attributes = None,
                   links: Sequence[trace.Link] | None = (), start_time: int | None = None,
                   record_exception: bool = True, set_status_on_exception: bool = True) -> trace.Span:
        return self._tracer().start_span(name, context, kind, attributes, links, start_time, record_exception,
                                         set_status_on_exception)

    def start_child(self, name: str, parent: trace.SpanContext | None,
                    kind: trace.SpanKind = trace.SpanKind.INTERNAL, attributes: Attributes = None) -> trace.Span:
        """A span under `parent` (a span context: the caller's, from its `traceparent`), as `start_span`
        under a Context holding it; the mesh's tracer takes the span context as it is (_Tracer.start_child)."""
        real = self._real  # (read here first: every server span of the mesh starts here, `_tracer` is a call)
        if real is None:
            real = self._tracer()
        if isinstance(real, _Tracer):
            return real.start_child(name, parent, None, kind, attributes)
        context = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else None
        return real.start_span(name, context, kind, attributes)

    def start_as_current_span(self, name: str, context: otel_context.Context | None = None,  # type: ignore[override]
                              kind: trace.SpanKind = trace.SpanKind.INTERNAL, attributes: Attributes = None,
                              links: Sequence[trace.Link] | None = (), start_time: int | None = None,
                              record_exception: bool = True, set_status_on_exception: bool = True,
                              end_on_exit: bool = True) -> AbstractContextManager[trace.Span]:
        return cast(AbstractContextManager[trace.Span], self._tracer().start_as_current_span(
            name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception,
            end_on_exit))


def tracer(name: str) -> _ModuleTracer:
    """The tracer for a module's spans (`_tracer = telemetry.tracer(__name__)` at import)."""
    return _ModuleTracer(name)


_tracer = tracer("nurture")


def provider(service_name: str, settings: Settings) -> MeshTracerProvider:
    """A tracer provider for `service_name` sampling at `settings.trace_sample_ratio`, without processors."""
    return MeshTracerProvider(Resource.create({"service.name": f"nurture-{service_name}",
                                               "service.instance.id": settings.replica}),
                              HeadSampler(settings.trace_sample_ratio))


def setup(service_name: str, settings: Settings) -> TracerProvider:
    """Install the process-wide tracer provider (once)."""
    global _configured
    made = provider(service_name, settings)
    exporter: SpanExporter
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True)
    else:
        # A file per replica (replica 0 keeps the plain name): two processes appending one file could
        # interleave their lines.
        own = "" if settings.replica == "0" else f"-{settings.replica}"
        exporter = JsonLinesExporter(settings.data_dir / "traces" / f"{service_name}{own}.jsonl")
    made.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500, max_queue_size=MAX_QUEUED_SPANS,
                                               max_export_batch_size=EXPORT_BATCH))
    if not _configured:
        trace.set_tracer_provider(made)
        _configured = True
    return made


# Traces a batch span joins or links (the bus reads 500 entries at a time; a trace viewer shows a few dozen).
MAX_TRACES = 50


def carrier_contexts(carriers: Iterable[str | bytes]) -> Iterator[trace.SpanContext]:
    """The span context each trace carrier holds (a JSON object of W3C headers, as stored beside an
    outbox row or a bus entry); an unreadable one is skipped."""
    for raw in carriers:
        try:
            headers = jsoncodec.loads(raw)
        except ValueError:
            continue
        if isinstance(headers, dict):
            yield trace.get_current_span(extract(headers)).get_span_context()


def traceparent_contexts(values: Iterable[str | None]) -> Iterator[trace.SpanContext]:
    """The span context of each W3C `traceparent` value (an event's own, `Event.traceparent`)."""
    for value in values:
        if value:
            yield trace.get_current_span(extract({"traceparent": value})).get_span_context()


def batch_parent(contexts: Iterable[trace.SpanContext]) -> tuple[otel_context.Context | None, list[trace.Link]]:
    """The parent and links of a span that does work for several traces at once (a group-committed
    ingest, a bus batch, a publish): the first sampled context is the parent and the other sampled
    ones are links (MAX_TRACES in all), so the work is recorded when any of its events is sampled and
    belongs to that event's trace. With none sampled the parent is the first valid context, unsampled,
    so the span is not recorded and nothing under it is either; with no valid context at all, None
    (the span is a root, sampled by the ratio)."""
    first: trace.SpanContext | None = None
    parent: trace.SpanContext | None = None
    links: list[trace.Link] = []
    joined: set[int] = set()  # trace ids, each joined or linked once
    for ctx in contexts:
        if not ctx.is_valid:
            continue
        if first is None:
            first = ctx
        if not ctx.trace_flags.sampled or ctx.trace_id in joined:
            continue
        joined.add(ctx.trace_id)
        if parent is None:
            parent = ctx
        else:
            links.append(trace.Link(ctx))
            if len(links) == MAX_TRACES - 1:
                break
    chosen = parent or first
    return (trace.set_span_in_context(trace.NonRecordingSpan(chosen)) if chosen else None), links


def instrument_engine(engine: Engine) -> None:
    """One span per SQL transaction, a child of the span current on the calling thread when that one is
    recorded (none otherwise: an unsampled event, or storage work outside any trace), that lists its
    statements (`db.statements`, each as verb and table). A span per statement cost more than SQLite's
    own work on the ingest path (about 60 µs each, six statements an ingest)."""
    attributes = {"db.system": engine.dialect.name}

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        if current_span().is_recording():
            conn.info["nurture_span"] = (_tracer.start_span("sql transaction", attributes=attributes), [])

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(conn: Connection, _cursor: DBAPICursor, statement: str, _params: object,
                   _context: ExecutionContext | None, many: bool) -> None:
        record_statement(conn, statement, many)

    def _end(conn: Connection, outcome: str) -> None:
        current = conn.info.pop("nurture_span", None)
        if current is None:
            return
        span, statements = current
        span.set_attribute("db.statements", statements)
        span.set_attribute("db.outcome", outcome)
        span.end()

    event.listen(engine, "commit", lambda conn: _end(conn, "commit"))
    event.listen(engine, "rollback", lambda conn: _end(conn, "rollback"))

    @event.listens_for(engine, "handle_error")
    def _error(exception_context: ExceptionContext) -> None:
        current = exception_context.connection.info.get("nurture_span") if exception_context.connection else None
        if current is not None:
            current[0].set_status(trace.Status(trace.StatusCode.ERROR, str(exception_context.original_exception)))


def record_statement(conn: Connection, statement: str, many: bool) -> None:
    """List a statement on its transaction's span (SQL run on the driver's cursor calls this itself)."""
    current = conn.info.get("nurture_span")
    if current is not None and len(current[1]) < MAX_STATEMENTS:
        current[1].append(_summary(statement) + (" (many)" if many else ""))


# Statements listed on one transaction's span (a long migration or sweep keeps its first ones).
MAX_STATEMENTS = 50
_WORDS = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+([\w.\"]+)", re.IGNORECASE)


def _summary(statement: str) -> str:
    """`INSERT scoring_events`: the verb and the first table named, without the SQL's values."""
    known = _SUMMARIES.get(statement)
    if known is None:
        verb = statement.split(None, 1)[0].upper() if statement.strip() else "?"
        table = _WORDS.search(statement[:300])
        known = f"{verb} {table.group(1).strip(chr(34))}" if table else verb
        if len(_SUMMARIES) < 2000:  # statements are prebuilt or cached, so few distinct texts recur
            _SUMMARIES[statement] = known
    return known


_SUMMARIES: dict[str, str] = {}


@contextmanager
def redis_span(name: str, **attributes: AttributeValue) -> Iterator[None]:
    """A span around one Redis round trip (a command or a pipeline) when the current span is recorded;
    nothing at all otherwise. `name` is the whole span name, a constant (`"redis XADD bus"`): no
    formatting per call."""
    if not current_span().is_recording():
        yield
        return
    attributes["db.system"] = "redis"
    with _tracer.start_as_current_span(name, attributes=attributes):
        yield
