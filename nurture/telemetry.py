"""OpenTelemetry for every process: one provider, one exporter, spans for SQL and Redis.

Spans go over OTLP/gRPC when `NURTURE_OTLP_ENDPOINT` is set, otherwise to a JSON-lines file under
`<data_dir>/traces/<service>.jsonl`, so a local run keeps its traces without a collector. SQL spans
come from SQLAlchemy's cursor events and Redis spans from `redis_span`, both cheap enough to leave on
(the stock instrumentations were not used: see nurture/rpc.py for what they cost).
"""

from __future__ import annotations

import json
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
                json.dumps(
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
    provider = TracerProvider(resource=Resource.create({"service.name": f"nurture-{service_name}"}))
    exporter: SpanExporter
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True)
    else:
        exporter = JsonLinesExporter(settings.data_dir / "traces" / f"{service_name}.jsonl")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    if not _configured:
        trace.set_tracer_provider(provider)
        _configured = True
    return provider


def instrument_engine(engine: Engine) -> None:
    """One span per SQL statement, a child of whatever span is current on the calling thread."""

    @event.listens_for(engine, "before_cursor_execute")
    def _start(conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool) -> None:
        span = _tracer.start_span(
            "sql " + statement.split(None, 1)[0].upper(),
            attributes={"db.system": engine.dialect.name, "db.statement": statement[:500]},
        )
        context._nurture_span = span

    @event.listens_for(engine, "after_cursor_execute")
    def _end(conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool) -> None:
        span = getattr(context, "_nurture_span", None)
        if span is not None:
            span.end()

    @event.listens_for(engine, "handle_error")
    def _error(exception_context: Any) -> None:
        span = getattr(exception_context.execution_context, "_nurture_span", None)
        if span is not None:
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(exception_context.original_exception)))
            span.end()


@contextmanager
def redis_span(operation: str, **attributes: Any) -> Iterator[trace.Span]:
    """A span around one Redis round trip (a command or a pipeline)."""
    with _tracer.start_as_current_span(f"redis {operation}", attributes={"db.system": "redis", **attributes}) as span:
        yield span
