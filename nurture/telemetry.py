"""OpenTelemetry for every process: one provider, one exporter, spans for SQL and Redis.

Spans go over OTLP/gRPC when `NURTURE_OTLP_ENDPOINT` is set, otherwise to a JSON-lines file under
`<data_dir>/traces/<service>.jsonl` (`<service>-<replica>.jsonl` for a replica other than 0), so a local
run keeps its traces without a collector. SQL spans (one per transaction) come from SQLAlchemy's
connection events and Redis spans from `redis_span`, both cheap enough to leave on (the stock
instrumentations were not used: see nurture/rpc.py).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from sqlalchemy import event
from sqlalchemy.engine import Engine

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
                    }
                )
            )
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def setup(service_name: str, settings: Settings) -> TracerProvider:
    """Install the process-wide tracer provider (once)."""
    global _configured
    provider = TracerProvider(resource=Resource.create({"service.name": f"nurture-{service_name}",
                                                        "service.instance.id": settings.replica}))
    exporter: SpanExporter
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True)
    else:
        # A file per replica (replica 0 keeps the plain name): two processes appending one file could
        # interleave their lines.
        own = "" if settings.replica == "0" else f"-{settings.replica}"
        exporter = JsonLinesExporter(settings.data_dir / "traces" / f"{service_name}{own}.jsonl")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    if not _configured:
        trace.set_tracer_provider(provider)
        _configured = True
    return provider


def instrument_engine(engine: Engine) -> None:
    """One span per SQL transaction, a child of whatever span is current on the calling thread, that
    lists its statements (`db.statements`, each as verb and table). A span per statement cost more
    than SQLite's own work on the ingest path (about 60 µs each, six statements an ingest)."""

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.info["nurture_span"] = (_tracer.start_span("sql transaction", attributes={
            "db.system": engine.dialect.name}), [])

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, many: bool) -> None:
        record_statement(conn, statement, many)

    def _end(conn: Any, outcome: str) -> None:
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
    def _error(exception_context: Any) -> None:
        current = exception_context.connection.info.get("nurture_span") if exception_context.connection else None
        if current is not None:
            current[0].set_status(trace.Status(trace.StatusCode.ERROR, str(exception_context.original_exception)))


def record_statement(conn: Any, statement: str, many: bool) -> None:
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
def redis_span(operation: str, **attributes: Any) -> Iterator[trace.Span]:
    """A span around one Redis round trip (a command or a pipeline)."""
    with _tracer.start_as_current_span(f"redis {operation}", attributes={"db.system": "redis", **attributes}) as span:
        yield span
