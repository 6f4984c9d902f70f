"""A tiny real gRPC servicer for the scoring contract (GetLead, GetLeads, IngestEvents) that records
what messaging asked of it, so messaging's tests do not depend on the scoring service's progress.

Like scoring, it changes a lead when it hears about it: an unsubscribe from all mail (or one without a
scope), a spam report or a hard bounce withdraws email consent, and `update` changes a lead between two
passes of the worker (consent withdrawn, address or time zone changed). `InProcessLeads` serves the same
leads to an in-process messaging engine without gRPC (the fast tests mutation testing runs).
`JourneysFake` answers what messaging asks of journeys (audience members, a lead's enrolments), served
in process through `InProcessChannel`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import grpc

from nurture.api.journeys.v1 import journeys_pb2, journeys_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.rpc import ServiceServer, start_server
from tests.conftest import MESH_TOKEN

if TYPE_CHECKING:
    from services.messaging.clients import Lead


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
        # Event type -> (error_code, error_message): what scoring refuses per event, as the real one
        # does for an event it cannot take (e.g. an unknown lead); refused events are not recorded.
        self.refuse: dict[str, tuple[str, str]] = {}

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
            if ev.type in self.refuse:
                code, message = self.refuse[ev.type]
                results.append(scoring_pb2.EventResult(event_id=ev.idempotency_key, error_code=code,
                                                       error_message=message))
                continue
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

    async def get_many(self, ids: Any) -> dict[str, Lead]:
        from services.messaging.clients import lead_dict

        if self.servicer.down:
            raise DownError()
        return {i: lead_dict(self.servicer._proto(self.servicer.leads[i])) for i in set(ids)
                if i in self.servicer.leads}

    async def get(self, lead_id: str) -> Lead | None:
        return (await self.get_many([lead_id])).get(lead_id)


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Aborted(code, details)


class InProcessChannel:
    """Stands in for a grpc.aio.Channel and hands each unary call to a servicer in this process, the
    messages serialized both ways and an abort raised as the AioRpcError a client would get. For the
    in-process tests `make mutate` runs in forked processes, where a real gRPC channel cannot live."""

    def __init__(self, servicer: Any) -> None:
        self.servicer = servicer
        self.timeouts: list[float | None] = []    # the deadline each call was given

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    **_: Any) -> Any:
        name = method.rsplit("/", 1)[1]

        async def call(request: Any, timeout: float | None = None, **_: Any) -> Any:
            self.timeouts.append(timeout)
            received = type(request).FromString(request_serializer(request))
            try:
                reply = await getattr(self.servicer, name)(received, _Context())
            except _Aborted as exc:
                raise grpc.aio.AioRpcError(exc.code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                           details=exc.details) from None
            return response_deserializer(reply.SerializeToString())

        return call


class JourneysFake(journeys_pb2_grpc.JourneysServicer):
    """What messaging asks of journeys (Members, LeadJourneys), answered from data the test sets, with
    every answer the real service can give: pages (at most `page_size` ids each), NOT_FOUND for an
    unknown journey, UNAVAILABLE while `down`."""

    def __init__(self, page_size: int = 1000) -> None:
        self.members: dict[str, list[str]] = {}        # "journey" or "journey.stage" -> active lead ids
        self.enrollments: dict[str, list[dict[str, Any]]] = {}
        self.page_size = page_size
        self.down = False
        self.requests: list[Any] = []
        self.channel: InProcessChannel | None = None   # the channel serving it, when a test set one

    async def Members(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        key = f"{request.journey}.{request.stage}" if request.stage else request.journey
        if key not in self.members:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no journey {request.journey}")
        start = int(request.cursor or 0)
        end = start + min(self.page_size, request.limit or self.page_size)
        ids = sorted(self.members[key])
        return journeys_pb2.MembersReply(lead_ids=ids[start:end], next_cursor=str(end) if end < len(ids) else "")

    async def LeadJourneys(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        return journeys_pb2.LeadJourneysReply(enrollments=[
            journeys_pb2.Enrollment(**e) for e in self.enrollments.get(request.lead_id, [])])
