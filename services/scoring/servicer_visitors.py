"""scoring's gRPC methods for website visitors (part of the Scoring service; ScoringServicer inherits
them): proto in, `app.visitors.VisitorDoor` call, proto out; errors to status codes."""

from __future__ import annotations

from datetime import UTC

import grpc

from nurture import errors, jsoncodec, limits
from nurture.api.scoring.v1 import scoring_pb2
from nurture.busmessage import LeadSnapshot
from nurture.jsontypes import JsonObject
from services.scoring.app.visitors import VisitorDoor, VisitorEventIn
from services.scoring.domain.records import EmailTaken, EventResult, InvalidInput, NotFound

VISITOR_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
MAX_VISITS = 1000


def visitor_id_problem(visitor_id: str) -> str:
    if not 16 <= len(visitor_id) <= 64 or not set(visitor_id) <= VISITOR_ID_CHARS:
        return "must be 16-64 letters, digits, _ or -"
    return ""


def _result(r: EventResult) -> scoring_pb2.EventResult:
    return scoring_pb2.EventResult(event_id=r.event_id, duplicate=r.duplicate, error_code=r.error_code,
                                   error_message=r.error_message)


def anonymous_lead(visitor_id: str, profile: JsonObject) -> scoring_pb2.Lead:
    """An anonymous visitor's profile in the shape of a lead (id `visitor:<id>`, no email)."""
    return scoring_pb2.Lead(
        id=f"visitor:{visitor_id}", segment=profile.get("segment") or "",
        attributes_json=jsoncodec.dumps(profile.get("attributes") or {}), consent_json="{}",
        score=int(profile.get("score") or 0), grade=str(profile.get("grade") or "D"),
        lifecycle_stage=str(profile.get("lifecycle_stage") or "subscriber"),
        counters_json=jsoncodec.dumps({**(profile.get("counters") or {}), "interests": profile.get("interests") or {}},
                                      default=str),
        version=int(profile.get("version") or 0))


class VisitorMethods:
    """The Visitor RPCs of the Scoring service."""

    _visitor_door: VisitorDoor | None

    def _door(self) -> VisitorDoor:
        if self._visitor_door is None:
            raise errors.Unavailable("website visitors are not served by this scoring process")
        return self._visitor_door

    async def CollectVisitorEvents(self, request: scoring_pb2.CollectRequest,
                                   context: grpc.aio.ServicerContext) -> scoring_pb2.CollectReply:
        if len(request.visits) > MAX_VISITS:
            raise errors.InvalidArgument(f"at most {MAX_VISITS} visits per call")
        problems: dict[str, str] = {}
        visits: list[tuple[str, list[VisitorEventIn]]] = []
        for i, visit in enumerate(request.visits):
            problem = visitor_id_problem(visit.visitor_id)
            if problem:
                problems[f"visits[{i}].visitor_id"] = problem
            events = []
            for j, ev in enumerate(visit.events):
                try:
                    props = limits.parse_json(ev.properties_json or "{}", field=f"visits[{i}].events[{j}].properties")
                except limits.InputError as exc:
                    problems.update(exc.problems)
                    continue
                events.append(VisitorEventIn(
                    type=ev.type, properties=props if isinstance(props, dict) else None,  # type: ignore[arg-type]
                    occurred_at=ev.occurred_at.ToDatetime(tzinfo=UTC) if ev.HasField("occurred_at") else None,
                    client_id=ev.client_id, trace=ev.traceparent or None))
            visits.append((visit.visitor_id, events))
        if problems:
            raise errors.invalid_fields(problems)
        outcomes = await self._door().collect(visits)
        return scoring_pb2.CollectReply(visits=[
            scoring_pb2.VisitResult(results=[_result(r) for r in o.results], known=bool(o.lead_id)) for o in outcomes])

    async def IdentifyVisitor(self, request: scoring_pb2.IdentifyVisitorRequest,
                              context: grpc.aio.ServicerContext) -> scoring_pb2.IdentifyVisitorReply:
        problem = visitor_id_problem(request.visitor_id)
        if problem:
            raise errors.invalid_fields({"visitor_id": problem})
        fields = limits.parse_json(request.fields_json or "{}", field="fields_json")
        if not isinstance(fields, dict):
            raise errors.invalid_fields({"fields_json": "must be a JSON object"})
        try:
            lead_id, created, merged = await self._door().identify(request.visitor_id, request.lead_id, fields)
        except InvalidInput as exc:
            raise errors.invalid_fields(exc.problems) from exc
        except NotFound:
            raise errors.NotFound("no such lead") from None
        except EmailTaken as exc:
            raise errors.Conflict(str(exc)) from exc
        return scoring_pb2.IdentifyVisitorReply(lead_id=lead_id, created=created, merged=merged)

    async def GetVisitor(self, request: scoring_pb2.VisitorRequest,
                         context: grpc.aio.ServicerContext) -> scoring_pb2.VisitorReply:
        problem = visitor_id_problem(request.visitor_id)
        if problem:
            raise errors.invalid_fields({"visitor_id": problem})
        found, lead = await self._door().visitor(request.visitor_id)
        if found is None:
            raise errors.NotFound("no such visitor")
        if lead is not None:
            return scoring_pb2.VisitorReply(lead_id=lead.id, profile=_lead(lead),
                                            anonymous_events=found.anonymous_events)
        return scoring_pb2.VisitorReply(profile=anonymous_lead(request.visitor_id, found.profile),
                                        anonymous_events=found.anonymous_events)

    async def NextFormFields(self, request: scoring_pb2.NextFieldsRequest,
                             context: grpc.aio.ServicerContext) -> scoring_pb2.NextFieldsReply:
        problem = visitor_id_problem(request.visitor_id)
        if problem:
            raise errors.invalid_fields({"visitor_id": problem})
        specs = await self._door().next_fields(request.visitor_id, request.limit)
        return scoring_pb2.NextFieldsReply(fields=[
            scoring_pb2.FormField(key=f.key, label=f.label, kind=f.kind, choices=f.choices) for f in specs])

    async def SubmitForm(self, request: scoring_pb2.SubmitFormRequest,
                         context: grpc.aio.ServicerContext) -> scoring_pb2.SubmitFormReply:
        problem = visitor_id_problem(request.visitor_id)
        if problem:
            raise errors.invalid_fields({"visitor_id": problem})
        answers = limits.parse_json(request.answers_json or "{}", field="answers_json")
        try:
            lead_id, stored, merged = await self._door().submit_form(request.visitor_id, answers)
        except InvalidInput as exc:
            raise errors.invalid_fields(exc.problems) from exc
        except EmailTaken as exc:
            raise errors.Conflict(str(exc)) from exc
        return scoring_pb2.SubmitFormReply(lead_id=lead_id, stored=stored, merged=merged)


def _lead(lead: LeadSnapshot) -> scoring_pb2.Lead:
    from services.scoring.servicer import lead_proto  # the one lead encoder (servicer imports this module)

    return lead_proto(lead)
