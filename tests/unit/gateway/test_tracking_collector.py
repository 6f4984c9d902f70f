"""The collect batcher's own pieces, without a network."""

from __future__ import annotations

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.tracking.collector import _traceparent


@pytest.mark.parametrize("sampled", [False, True])
def test_an_events_traceparent_is_the_one_the_w3c_propagator_writes(sampled: bool) -> None:
    span = trace.SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0x00F067AA0BA902B7, is_remote=False,
                             trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled else 0))
    carrier: dict[str, str] = {}
    token = otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(span)))
    try:
        TraceContextTextMapPropagator().inject(carrier)
    finally:
        otel_context.detach(token)
    assert _traceparent(span) == carrier["traceparent"]
    assert _traceparent(span).endswith("-01" if sampled else "-00")


def test_a_request_outside_any_trace_gives_its_events_none() -> None:
    assert _traceparent(trace.INVALID_SPAN_CONTEXT) == ""
