"""Collect requests on their way to Redis, as one batch: the requests that arrive together are counted
against the rate limits, their repeated events dropped and their new events appended to the collect
stream in one Redis script call per site key (`RateLimits.collect`, each request in its order, so each
still gets its own exact count). A request is answered once its entry is in the stream: scoring stores
the stream in large batches (`nurture.collectstream`, docs/ARCHITECTURE.md "Website collect"), so an
answered event is kept even while scoring is down. One batch at a time: under load the batch grows with
the round trip instead of the number of calls, as `gateway.ingest` does for /v1/events.

Each request gets its own outcome: its refusal (over a limit), how many of its events were appended and
how many were repeats, or the Redis error of its batch (every request counted with it fails; one whose
entry was appended before the error is answered as a repeat when the snippet sends it again, and stored
once)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import trace

from gateway.tracking.keys import SiteKey
from gateway.tracking.policy import CollectedEvent
from gateway.tracking.ratelimit import Append, Appended, RateLimits, Refusal, Take
from nurture import collectstream
from nurture.batching import Batcher
from nurture.telemetry import batch_parent


@dataclass(frozen=True)
class Visit:
    take: Take                       # what the request counts against the limits
    events: Sequence[CollectedEvent]  # its valid events (none: it is counted, nothing is stored)
    traceparent: str
    span: trace.SpanContext           # the request's, so the batch's work joins a sampled request's trace


def _traceparent(span: trace.SpanContext) -> str:
    """The W3C `traceparent` of the request's span ("" without one): what the propagator's `inject`
    writes, made directly (the propagator's carrier and its baggage cost ~1.5% of the gateway's CPU
    per collected event, for one header of which only this value is kept)."""
    if not span.is_valid:
        return ""
    return f"00-{span.trace_id:032x}-{span.span_id:016x}-{int(span.trace_flags):02x}"


def _append(visit: Visit) -> Append:
    return Append(visit.take, [(ev.client_id, collectstream.encode_event(ev.type, dict(ev.properties), ev.occurred_at,
                                                                         ev.client_id))
                               for ev in visit.events], visit.traceparent)


class VisitCollector:
    def __init__(self, limits: RateLimits, max_visits: int = 500) -> None:
        self.limits = limits
        self._batcher: Batcher[Visit, Refusal | Appended] = Batcher(self._handle, max_batch=max_visits, parallel=1)

    async def collect(self, key: SiteKey, visitor_id: str, counted: int, events: Sequence[CollectedEvent]
                      ) -> Refusal | Appended:
        """Count one request (`counted` events for the visitor: all it sent, valid or not) and, when it
        is within its limits, append its new valid `events` to the collect stream: the refusal, or what
        was appended. Raises the Redis error of its batch."""
        span = trace.get_current_span().get_span_context()
        return await self._batcher.submit(Visit(Take.now_for(key, visitor_id, counted), events, _traceparent(span),
                                                span))

    async def _handle(self, visits: list[Visit]) -> list[Refusal | Appended | BaseException]:
        # The batch's Redis call runs in the trace of its first sampled request (the others linked), not
        # in whichever request's task started the batch: recorded when any is sampled.
        parent, _ = batch_parent(v.span for v in visits)
        token = otel_context.attach(parent) if parent is not None else None
        try:
            return await self.limits.collect([_append(v) for v in visits])  # a Redis error fails the batch
        finally:
            if token is not None:
                otel_context.detach(token)
