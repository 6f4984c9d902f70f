"""Collect requests on their way to the rate limits and to scoring, as one batch: the requests that
arrive together are counted in one Redis script call (`RateLimits.count`, each in its order, so each
still gets its own exact count) and the ones within their limits leave in one `CollectVisitorEvents`
call. One batch at a time: under load the batch grows with the round trip instead of the number of
calls, as `gateway.ingest` does for /v1/events. Counting and storing in one stage (they were two
batchers in a row) made the batches about twice as large, and so halved the Redis and gRPC calls
per event, both a fixed cost per call to the gateway and the call to scoring a transaction too.

Each request gets its own outcome: its refusal (over a limit), scoring's result for its events, or
the error of the part of the batch it was in: a Redis error fails every request counted with it
(nothing of theirs is stored), a gRPC error every request whose events went in the call (a refused
request keeps its refusal)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import trace

from gateway.deps import Mesh
from gateway.tracking.keys import SiteKey
from gateway.tracking.policy import CollectedEvent
from gateway.tracking.ratelimit import RateLimits, Refusal, Take
from nurture import jsoncodec
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
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


def _proto(visit: Visit) -> scoring_pb2.Visit:
    out = scoring_pb2.Visit(visitor_id=visit.take.visitor_id)
    for ev in visit.events:
        msg = scoring_pb2.VisitorEvent(type=ev.type, properties_json=jsoncodec.dumps(ev.properties),
                                       client_id=ev.client_id, traceparent=visit.traceparent)
        if ev.occurred_at is not None:
            msg.occurred_at.FromDatetime(ev.occurred_at)
        out.events.append(msg)
    return out


class VisitCollector:
    def __init__(self, mesh: Mesh, limits: RateLimits, max_visits: int = 500) -> None:
        self._mesh = mesh
        self.limits = limits
        self._batcher: Batcher[Visit, Refusal | scoring_pb2.VisitResult] = Batcher(
            self._handle, max_batch=max_visits, parallel=1)
        # The stub of the mesh's scoring channel, made again only if that channel is replaced (making one
        # builds every method's callable: about 1% of the gateway's CPU per collected event, made per batch).
        self._stub: tuple[object, scoring_pb2_grpc.ScoringStub] | None = None

    def _scoring(self) -> scoring_pb2_grpc.ScoringStub:
        channel = self._mesh.channel("scoring")
        if self._stub is None or self._stub[0] is not channel:
            self._stub = (channel, scoring_pb2_grpc.ScoringStub(channel))
        return self._stub[1]

    async def collect(self, key: SiteKey, visitor_id: str, counted: int, events: Sequence[CollectedEvent]
                      ) -> Refusal | scoring_pb2.VisitResult:
        """Count one request (`counted` events for the visitor: all it sent, valid or not) and, when it
        is within its limits, store its valid `events`: the refusal, or scoring's result (empty when
        there were none to store). Raises the Redis or gRPC error of its part of the batch."""
        span = trace.get_current_span().get_span_context()
        return await self._batcher.submit(Visit(Take.now_for(key, visitor_id, counted), events, _traceparent(span),
                                                span))

    async def _handle(self, visits: list[Visit]) -> list[Refusal | scoring_pb2.VisitResult | BaseException]:
        # The batch's Redis and gRPC calls run in the trace of its first sampled request (the others
        # linked), not in whichever request's task started the batch: recorded when any is sampled.
        parent, _ = batch_parent(v.span for v in visits)
        token = otel_context.attach(parent) if parent is not None else None
        try:
            return await self._count_and_store(visits)
        finally:
            if token is not None:
                otel_context.detach(token)

    async def _count_and_store(self, visits: list[Visit]) -> list[Refusal | scoring_pb2.VisitResult | BaseException]:
        verdicts = await self.limits.count([v.take for v in visits])  # a Redis error fails the whole batch
        out: list[Refusal | scoring_pb2.VisitResult | BaseException] = [
            v if v is not None else scoring_pb2.VisitResult() for v in verdicts]
        send = [i for i, v in enumerate(verdicts) if v is None and visits[i].events]
        if not send:
            return out
        try:
            reply = await self._scoring().CollectVisitorEvents(
                scoring_pb2.CollectRequest(visits=[_proto(visits[i]) for i in send]), timeout=self._mesh.timeout)
            if len(reply.visits) != len(send):
                raise RuntimeError(f"scoring answered {len(reply.visits)} visits for {len(send)}")
            for i, result in zip(send, reply.visits, strict=True):
                out[i] = result
        except Exception as exc:  # the call's visits hear why (a gRPC error becomes its HTTP status)
            for i in send:
                out[i] = exc
        return out
