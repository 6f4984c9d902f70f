"""Collected events on their way to scoring: the visits of concurrent requests leave together in one
`CollectVisitorEvents` call (one at a time: under load the batch grows with the round trip instead of
the number of calls, as `gateway.ingest` does for /v1/events)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.propagate import inject

from gateway.deps import Mesh
from gateway.tracking.policy import CollectedEvent
from nurture import jsoncodec
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.batching import Batcher


@dataclass(frozen=True)
class Visit:
    visitor_id: str
    events: Sequence[CollectedEvent]
    traceparent: str


def _proto(visit: Visit) -> scoring_pb2.Visit:
    out = scoring_pb2.Visit(visitor_id=visit.visitor_id)
    for ev in visit.events:
        msg = scoring_pb2.VisitorEvent(type=ev.type, properties_json=jsoncodec.dumps(ev.properties),
                                       client_id=ev.client_id, traceparent=visit.traceparent)
        if ev.occurred_at is not None:
            msg.occurred_at.FromDatetime(ev.occurred_at)
        out.events.append(msg)
    return out


class VisitCollector:
    def __init__(self, mesh: Mesh, max_visits: int = 500) -> None:
        self._mesh = mesh
        self._batcher: Batcher[Visit, scoring_pb2.VisitResult] = Batcher(self._send, max_batch=max_visits,
                                                                         parallel=1)

    async def collect(self, visitor_id: str, events: Sequence[CollectedEvent]) -> scoring_pb2.VisitResult:
        carrier: dict[str, str] = {}
        inject(carrier)
        return await self._batcher.submit(Visit(visitor_id, events, carrier.get("traceparent", "")))

    async def _send(self, visits: list[Visit]) -> list[scoring_pb2.VisitResult | BaseException]:
        stub = scoring_pb2_grpc.ScoringStub(self._mesh.channel("scoring"))
        reply = await stub.CollectVisitorEvents(scoring_pb2.CollectRequest(visits=[_proto(v) for v in visits]),
                                                timeout=self._mesh.timeout)
        return list(reply.visits)
