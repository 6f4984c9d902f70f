"""crm_sync's gRPC clients of other services: scoring's lead as a dict, journeys' participation."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from nurture import jsoncodec
from nurture.api.scoring.v1 import scoring_pb2


def lead_from_proto(lead: scoring_pb2.Lead) -> dict[str, Any]:
    def j(text: str) -> Any:
        try:
            return jsoncodec.loads(text) if text else {}
        except ValueError:
            return {}

    return {"id": lead.id, "email": lead.email or None, "first_name": lead.first_name or None,
            "last_name": lead.last_name or None, "segment": lead.segment or None, "timezone": lead.timezone or None,
            "locale": lead.locale or None, "attributes": j(lead.attributes_json), "consent": j(lead.consent_json),
            "score": lead.score, "grade": lead.grade, "lifecycle_stage": lead.lifecycle_stage,
            "counters": j(lead.counters_json), "crm_id": lead.crm_id or None, "version": lead.version,
            "interests": {}}


class JourneysLookup:
    """Journey participation from journeys' LeadsJourneys (one call for a batch of leads; LeadJourneys
    per lead from a journeys that predates it), with a breaker so a missing or down journeys service
    costs one failed call per 10 s, not one per lead."""

    BATCH = 500  # lead ids per LeadsJourneys call (journeys takes up to 1,000)

    def __init__(self, channel: grpc.aio.Channel | None) -> None:
        self._stub: Any = None
        self._open_until = 0.0
        self._batched = True
        if channel is not None:
            try:
                from nurture.api.journeys.v1 import journeys_pb2, journeys_pb2_grpc
            except ImportError:
                return
            self._pb = journeys_pb2
            self._stub = journeys_pb2_grpc.JourneysStub(channel)

    async def many(self, lead_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        lead_ids = [i for i in lead_ids if i]
        if self._stub is None or time.monotonic() < self._open_until or not lead_ids:
            return {}
        if self._batched:
            try:
                return await self._batch(lead_ids)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    self._open_until = time.monotonic() + 10.0
                    return {}
                self._batched = False  # a journeys from before LeadsJourneys (a rolling upgrade)
        return await self._one_by_one(lead_ids)

    async def _batch(self, lead_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """One LeadsJourneys call per BATCH leads."""
        out: dict[str, list[dict[str, Any]]] = {}
        for i in range(0, len(lead_ids), self.BATCH):
            reply = await self._stub.LeadsJourneys(
                self._pb.LeadsJourneysRequest(lead_ids=lead_ids[i:i + self.BATCH]), timeout=2.0)
            for lead in reply.leads:
                out[lead.lead_id] = [{"journey": e.journey, "status": e.status, "stage": e.stage}
                                     for e in lead.enrollments]
        return out

    async def _one_by_one(self, lead_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        sem = asyncio.Semaphore(16)
        out: dict[str, list[dict[str, Any]]] = {}

        async def one(lead_id: str) -> None:
            if time.monotonic() < self._open_until:
                return
            async with sem:
                try:
                    reply = await self._stub.LeadJourneys(self._pb.LeadJourneysRequest(lead_id=lead_id), timeout=1.0)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        self._open_until = time.monotonic() + 10.0
                    return
            out[lead_id] = [{"journey": e.journey, "status": e.status, "stage": e.stage} for e in reply.enrollments]

        await asyncio.gather(*(one(i) for i in lead_ids))
        return out
