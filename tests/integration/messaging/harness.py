"""A tiny real gRPC servicer for the scoring contract (GetLead, GetLeads, IngestEvents) that records
what messaging asked of it, so messaging's tests do not depend on the scoring service's progress.

Like scoring, it changes a lead when it hears about it: an unsubscribe from all mail (or one without a
scope), a spam report or a hard bounce withdraws email consent, and `update` changes a lead between two
passes of the worker (consent withdrawn, address or time zone changed). `InProcessLeads` serves the same
leads to an in-process messaging engine without gRPC (the fast tests mutation testing runs)."""

from __future__ import annotations

import json
from typing import Any

import grpc

from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.rpc import ServiceServer, start_server
from tests.conftest import MESH_TOKEN


def make_lead(lead_id: str, **over: Any) -> dict[str, Any]:
    lead: dict[str, Any] = {
        "id": lead_id, "email": f"{lead_id}@example.com", "first_name": "Ana", "last_name": "Diaz",
        "segment": "skilled_professional", "timezone": "Asia/Kolkata", "locale": "en",
        "attributes": {"profession": "nurse", "countries_of_interest": ["CA", "AU"]},
        "consent": {"email": True}, "score": 30, "grade": "B", "lifecycle_stage": "lead",
    }
    lead.update(over)
    return lead


class ScoringStub(scoring_pb2_grpc.ScoringServicer):
    def __init__(self) -> None:
        self.leads: dict[str, dict[str, Any]] = {}
        self.events: list[scoring_pb2.Event] = []
        self.keys: set[str] = set()
        self.down = False

    def add(self, lead: dict[str, Any]) -> None:
        self.leads[lead["id"]] = lead

    def update(self, lead_id: str, **changes: Any) -> None:
        """Change a lead as scoring would after a PATCH (the next GetLead(s) answers the new values)."""
        self.leads[lead_id] = {**self.leads[lead_id], **changes}

    def _apply(self, ev: scoring_pb2.Event) -> None:
        """What scoring's model does to consent on messaging's feedback events (services/scoring/domain/rules.py)."""
        lead = self.leads.get(ev.lead_id)
        if lead is None:
            return
        props = json.loads(ev.properties_json or "{}")
        withdrawn = ev.type in ("spam_reported", "email_hard_bounced") or (
            ev.type == "unsubscribed" and props.get("scope") not in ("nurture", "transactional"))
        if withdrawn:
            self.update(ev.lead_id, consent={**lead["consent"], "email": False})

    def _proto(self, lead: dict[str, Any]) -> scoring_pb2.Lead:
        return scoring_pb2.Lead(
            id=lead["id"], email=lead["email"], first_name=lead["first_name"], last_name=lead["last_name"],
            segment=lead["segment"], timezone=lead["timezone"], locale=lead["locale"],
            attributes_json=json.dumps(lead["attributes"]), consent_json=json.dumps(lead["consent"]),
            score=lead["score"], grade=lead["grade"], lifecycle_stage=lead["lifecycle_stage"], counters_json="{}")

    async def GetLead(self, request: Any, context: grpc.aio.ServicerContext) -> scoring_pb2.Lead:
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        lead = self.leads.get(request.id)
        if lead is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such lead")
        return self._proto(lead)

    async def GetLeads(self, request: Any, context: grpc.aio.ServicerContext) -> scoring_pb2.GetLeadsReply:
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        return scoring_pb2.GetLeadsReply(leads=[self._proto(self.leads[i]) for i in request.ids if i in self.leads])

    async def IngestEvents(self, request: Any, context: grpc.aio.ServicerContext) -> scoring_pb2.IngestReply:
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        results = []
        for ev in request.events:
            dup = ev.idempotency_key in self.keys
            if not dup:
                self.keys.add(ev.idempotency_key)
                self.events.append(ev)
                self._apply(ev)
            results.append(scoring_pb2.EventResult(event_id=ev.idempotency_key, duplicate=dup))
        return scoring_pb2.IngestReply(results=results)

    def of_type(self, etype: str) -> list[tuple[str, dict[str, Any]]]:
        return [(e.idempotency_key, json.loads(e.properties_json)) for e in self.events if e.type == etype]


async def start_scoring_stub() -> tuple[ScoringStub, ServiceServer]:
    servicer = ScoringStub()

    def register(server: grpc.aio.Server) -> list[str]:
        scoring_pb2_grpc.add_ScoringServicer_to_server(servicer, server)
        return [scoring_pb2.DESCRIPTOR.services_by_name["Scoring"].full_name]

    return servicer, await start_server(name="scoring-stub", port=0, register=register,
                                              mesh_tokens=[MESH_TOKEN])


class DownError(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down")


class _InProcessStub:
    def __init__(self, servicer: ScoringStub) -> None:
        self._servicer = servicer

    async def IngestEvents(self, request: Any, timeout: float | None = None) -> scoring_pb2.IngestReply:
        if self._servicer.down:
            raise DownError()
        return await self._servicer.IngestEvents(request, None)  # type: ignore[arg-type]


class InProcessLeads:
    """messaging's LeadSource over a ScoringStub, without gRPC (same dicts as `leads.lead_dict`)."""

    def __init__(self, servicer: ScoringStub) -> None:
        self.servicer = servicer
        self.stub = _InProcessStub(servicer)

    async def get_many(self, ids: Any) -> dict[str, dict[str, Any]]:
        from services.messaging.clients import lead_dict

        if self.servicer.down:
            raise DownError()
        return {i: lead_dict(self.servicer._proto(self.servicer.leads[i])) for i in set(ids)
                if i in self.servicer.leads}

    async def get(self, lead_id: str) -> dict[str, Any] | None:
        return (await self.get_many([lead_id])).get(lead_id)
