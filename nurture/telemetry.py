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

SQL spans (one per transaction) come from SQLAlchemy's connection events and Redis spans from
`redis_span`; both are made only inside a recording span, so an unsampled event costs them nothing
(the stock instrumentations were not used: see nurture/rpc.py).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.util.types import AttributeValue
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext, ExecutionContext
from sqlalchemy.engine.interfaces import DBAPICursor

from nurture import jsoncodec
from nurture.settings import Settings

_tracer = trace.get_tracer("nurture")
_configured = False


class JsonLinesExporter(SpanExporter):
    """Appends one JSON object per finished span to a file (the local run's trace store)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            parent = span.parent
            lines.append(
                jsoncodec.dumps(
                    {
                        "trace_id": format(ctx.trace_id, "032x") if ctx else None,
                        "span_id": format(ctx.span_id, "016x") if ctx else None,
                        "parent_id": format(parent.span_id, "016x") if parent else None,
                        "name": span.name,
                        "service": span.resource.attributes.get("service.name"),
                        "start_ns": span.start_time,
                        "end_ns": span.end_time,
                        "status": span.status.status_code.name,
                        "attributes": {k: _plain(v) for k, v in (span.attributes or {}).items()},
                        # The traces of the other events a batch span did work for (batch_parent).
                        "links": [format(link.context.trace_id, "032x") for link in span.links],
                    }
                )
            )
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def _plain(value: AttributeValue) -> AttributeValue:
    return list(value) if isinstance(value, tuple) else value


# Spans waiting for the export thread. The SDK's 2,048 filled in a fraction of a second at a few thousand
# events a second (each makes about ten spans in scoring alone), and a span dropped there leaves a
# sampled trace with a hole; 64k spans of a few hundred bytes each is a bounded few tens of MB.
MAX_QUEUED_SPANS = 65_536
EXPORT_BATCH = 2_048


def sampler(ratio: float) -> Sampler:
    """Head sampling: a root span is recorded for `ratio` of trace ids (by the id, so any process
    deciding on the same root decides alike); a span with a parent follows the parent's flag."""
    return ParentBased(ALWAYS_ON if ratio >= 1.0 else TraceIdRatioBased(ratio))


def setup(service_name: str, settings: Settings) -> TracerProvider:
    """Install the process-wide tracer provider (once)."""
    global _configured
    provider = TracerProvider(resource=Resource.create({"service.name": f"nurture-{service_name}",
                                                        "service.instance.id": settings.replica}),
                              sampler=sampler(settings.trace_sample_ratio))
    exporter: SpanExporter
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True)
    else:
        # A file per replica (replica 0 keeps the plain name): two processes appending one file could
        # interleave their lines.
        own = "" if settings.replica == "0" else f"-{settings.replica}"
        exporter = JsonLinesExporter(settings.data_dir / "traces" / f"{service_name}{own}.jsonl")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500, max_queue_size=MAX_QUEUED_SPANS,
                                                   max_export_batch_size=EXPORT_BATCH))
    if not _configured:
        trace.set_tracer_provider(provider)
        _configured = True
    return provider


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
        if trace.get_current_span().is_recording():
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
    if not trace.get_current_span().is_recording():
        yield
        return
    attributes["db.system"] = "redis"
    with _tracer.start_as_current_span(name, attributes=attributes):
        yield
