"""Leads: create/update, progressive profiling, read, list, erase, and the merged timeline."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Sequence
from typing import NotRequired

import grpc
from fastapi import APIRouter, Depends, Query, Response

from gateway.convert import Enrollment, Lead, details, enrollment_json, iso, lead_json, require_object
from gateway.deps import ApiError, Mesh, json_body, mesh, require_key
from gateway.shapes import DocumentedRoute, TypedDict
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.jsontypes import JsonObject, JsonValue
from nurture.limits import INT32_MAX, INT32_MIN
from nurture.settings import SERVICES

router = APIRouter(prefix="/v1/leads", tags=["leads"], dependencies=[Depends(require_key)],
                   route_class=DocumentedRoute)


class Suppression(TypedDict):
    channel: str
    scope: str   # nurture | transactional | all
    reason: str


class Subscriptions(TypedDict):
    """What mail the person would get now, by kind (nurture, transactional), and the suppressions why not."""

    email: dict[str, bool]
    suppressed: list[Suppression]


class LeadWithSubscriptions(Lead):
    """A lead as GET, POST and PATCH answer it; `subscriptions` null when messaging does not answer."""

    subscriptions: Subscriptions | None


class LeadPage(TypedDict):
    items: list[Lead]
    next_cursor: str | None


class Erased(TypedDict):
    id: str
    erased: bool
    removed: dict[str, int]   # service → the records it removed


class TimelineEntry(TypedDict):
    at: str | None
    kind: str
    type: str
    summary: str
    id: str
    details: NotRequired[JsonValue]   # left out when the service gave none


class Missing(TypedDict):
    service: str
    status: str   # the gRPC status name it answered


class Timeline(TypedDict):
    items: list[TimelineEntry]
    incomplete: NotRequired[list[Missing]]   # the services that did not answer; left out when all did


def scoring(m: Mesh) -> scoring_pb2_grpc.ScoringStub:
    return scoring_pb2_grpc.ScoringStub(m.channel("scoring"))


async def lead_journeys(m: Mesh, lead_id: str) -> list[Enrollment]:
    """The lead's journeys from the journeys service; a lead is still readable when it is down."""
    try:
        from nurture.api.journeys.v1 import journeys_pb2, journeys_pb2_grpc
    except ImportError:
        return []
    try:
        reply = await journeys_pb2_grpc.JourneysStub(m.channel("journeys")).LeadJourneys(
            journeys_pb2.LeadJourneysRequest(lead_id=lead_id), timeout=m.timeout)
    except grpc.aio.AioRpcError:
        return []
    return [enrollment_json(e) for e in reply.enrollments]


async def lead_subscriptions(m: Mesh, lead: scoring_pb2.Lead) -> Subscriptions | None:
    """What mail the person would get now, by kind, and why not: consent is the lead's own (scoring),
    suppression is the address's (messaging; it outlives an erasure). None when messaging is down,
    so a lead stays readable."""
    try:
        reply = await messaging_pb2_grpc.MessagingStub(m.channel("messaging")).Subscriptions(
            messaging_pb2.SubscriptionsRequest(email=lead.email), timeout=m.timeout)
    except grpc.aio.AioRpcError:
        return None
    consent = details(lead.consent_json or "{}").get("email") is True
    scopes = {s.scope for s in reply.suppressed if s.channel == "email"}
    return {
        "email": {kind: bool(lead.email) and consent and not scopes & {"all", kind}
                  for kind in ("nurture", "transactional")},
        "suppressed": [{"channel": s.channel, "scope": s.scope, "reason": s.reason} for s in reply.suppressed],
    }


async def suppressed_scopes(m: Mesh, leads: Sequence[scoring_pb2.Lead]) -> dict[str, set[str]] | None:
    """Each address's email suppression scopes, for a page of leads in one call (addresses without one
    are left out). None when messaging is down: the leads are shown with their own consent."""
    emails = sorted({lead.email for lead in leads if lead.email})
    if not emails:
        return {}
    try:
        reply = await messaging_pb2_grpc.MessagingStub(m.channel("messaging")).Subscriptions(
            messaging_pb2.SubscriptionsRequest(emails=emails), timeout=m.timeout)
    except grpc.aio.AioRpcError:
        return None
    return {email: {s.scope for s in found.suppressed if s.channel == "email"}
            for email, found in reply.by_email.items()}


async def leads_json(m: Mesh, leads: Sequence[scoring_pb2.Lead]) -> list[Lead]:
    """A page of leads as the API lists them, consent as the engine applies it (see shown_consent)."""
    scopes = await suppressed_scopes(m, leads)
    return [lead_json(lead, suppressed=None if scopes is None else scopes.get(lead.email, set()))
            for lead in leads]


async def full_lead(m: Mesh, lead: scoring_pb2.Lead) -> LeadWithSubscriptions:
    """The lead as GET/POST/PATCH answer it: with its journeys and subscriptions."""
    journeys, subscriptions = await asyncio.gather(lead_journeys(m, lead.id), lead_subscriptions(m, lead))
    scopes = None if subscriptions is None else [s["scope"] for s in subscriptions["suppressed"]
                                                 if s["channel"] == "email"]
    return {**lead_json(lead, journeys, suppressed=scopes), "subscriptions": subscriptions}


async def _upsert(m: Mesh, lead_id: str, body: JsonObject, *, merge: bool,
                  must_exist: bool) -> scoring_pb2.UpsertLeadReply:
    fields = {k: v for k, v in body.items() if k != "id"}
    reply: scoring_pb2.UpsertLeadReply = await scoring(m).UpsertLead(scoring_pb2.UpsertLeadRequest(
        id=lead_id, fields_json=json.dumps(fields), merge=merge, source="api", must_exist=must_exist),
        timeout=m.timeout)
    return reply


@router.post("", status_code=201, summary="Create or update a lead by id")
async def create_lead(response: Response, body: JsonValue = Depends(json_body),
                      m: Mesh = Depends(mesh)) -> LeadWithSubscriptions:
    body = require_object(body)
    # Absent (or null): the service generates one. Anything else is the caller's id and must be one: an
    # empty string or a 0 is a mistake, not a request for a generated id.
    lead_id = body.get("id")
    if lead_id is None:
        lead_id = ""
    elif not isinstance(lead_id, str) or not lead_id:
        raise ApiError(422, "invalid", "id must be a non-empty string (leave it out to have one generated)",
                       {"fields": {"id": "must be a non-empty string (leave it out to have one generated)"}})
    reply = await _upsert(m, lead_id, body, merge=False, must_exist=False)
    response.status_code = 201 if reply.created else 200
    return await full_lead(m, reply.lead)


@router.patch("/{lead_id}", summary="Merge attributes (progressive profiling)")
async def patch_lead(lead_id: str, body: JsonValue = Depends(json_body),
                     m: Mesh = Depends(mesh)) -> LeadWithSubscriptions:
    body = require_object(body)
    if "id" in body and body["id"] != lead_id:
        # A lead's id is its address: a PATCH naming another was answered 200 with nothing renamed.
        why = "cannot be changed (a lead's id is the one in the address)"
        raise ApiError(422, "invalid", f"id {why}", {"fields": {"id": why}})
    reply = await _upsert(m, lead_id, body, merge=True, must_exist=True)
    return await full_lead(m, reply.lead)


@router.get("/{lead_id}", summary="A lead with its score, grade, stage and journeys")
async def get_lead(lead_id: str, m: Mesh = Depends(mesh)) -> LeadWithSubscriptions:
    lead = await scoring(m).GetLead(scoring_pb2.GetLeadRequest(id=lead_id), timeout=m.timeout)
    return await full_lead(m, lead)


def encode_cursor(kind: str, position: str) -> str | None:
    """Opaque page cursor: the position the service returned, tagged with the listing it belongs to.
    Opaque so that a cursor can be checked (a made-up or foreign one is a 422, not a silent empty
    page) and the services' keyset formats stay theirs to change."""
    if not position:
        return None
    return base64.urlsafe_b64encode(json.dumps([kind, position]).encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> str:
    if not cursor:
        return ""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        tag, position = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        tag, position = None, None
    if tag != kind or not isinstance(position, str) or not position:
        raise ApiError(422, "invalid", "cursor is not one this listing returned; use next_cursor as given",
                       {"fields": {"cursor": "must be a next_cursor from the same listing"}})
    return position


async def _check_filters(m: Mesh, segment: str, stage: str) -> None:
    """Segments and lifecycle stages are the scoring model's data: a name the model does not define
    matches nothing ever, which is the caller's mistake, not an empty result."""
    if not segment and not stage:
        return
    reply = await scoring(m).GetScoringModel(scoring_pb2.ScoringModelRequest(), timeout=m.timeout)
    model = json.loads(reply.definition_json or "{}")
    segments = sorted({str(s.get("segment")) for s in model.get("segments", [])})
    stages = list((model.get("lifecycle") or {}).get("order", []))
    problems: dict[str, str] = {}
    if segment and segments and segment not in segments:
        problems["segment"] = f"must be one of {', '.join(segments)}"
    if stage and stages and stage not in stages:
        problems["stage"] = f"must be one of {', '.join(stages)}"
    if problems:
        raise ApiError(422, "invalid", "; ".join(f"{k} {v}" for k, v in problems.items()), {"fields": problems})


def matches(lead: scoring_pb2.Lead, q: str) -> bool:
    """The search `q` of a listing, on a lead already read: its email, first or last name starts with
    it, in any case (scoring's ListLeads `q` in SQL)."""
    prefix = q.lower()
    return any(value.lower().startswith(prefix) for value in (lead.email, lead.first_name, lead.last_name))


@router.get("", summary="A page of leads")
async def list_leads(
    segment: str = "", min_score: int | None = Query(None, ge=INT32_MIN, le=INT32_MAX), stage: str = "",
    journey: str = "", email: str = "", q: str = Query("", max_length=320),
    cursor: str = "", limit: int = Query(100, ge=1, le=1000), m: Mesh = Depends(mesh),
) -> LeadPage:
    await _check_filters(m, segment, stage)
    if journey:
        from nurture.api.journeys.v1 import journeys_pb2, journeys_pb2_grpc

        members = await journeys_pb2_grpc.JourneysStub(m.channel("journeys")).Members(
            journeys_pb2.MembersRequest(journey=journey, cursor=decode_cursor("journey:" + journey, cursor),
                                        limit=limit), timeout=m.timeout)
        got = await scoring(m).GetLeads(scoring_pb2.GetLeadsRequest(ids=list(members.lead_ids)), timeout=m.timeout)
        leads = [lead for lead in got.leads if (not segment or lead.segment == segment)
                 and (min_score is None or lead.score >= min_score) and (not stage or lead.lifecycle_stage == stage)
                 and (not email or lead.email == email) and (not q or matches(lead, q))]
        return {"items": await leads_json(m, leads),
                "next_cursor": encode_cursor("journey:" + journey, members.next_cursor)}
    reply = await scoring(m).ListLeads(scoring_pb2.ListLeadsRequest(
        segment=segment, min_score=min_score or 0, has_min_score=min_score is not None, stage=stage, email=email,
        q=q, cursor=decode_cursor("leads", cursor), limit=limit), timeout=m.timeout)
    return {"items": await leads_json(m, reply.leads),
            "next_cursor": encode_cursor("leads", reply.next_cursor)}


@router.delete("/{lead_id}", summary="Erase the person (right to erasure)")
async def erase_lead(lead_id: str, m: Mesh = Depends(mesh)) -> Erased:
    reply = await scoring(m).EraseLead(scoring_pb2.EraseRequest(id=lead_id), timeout=m.timeout)
    removed: dict[str, int] = {"scoring": 1}
    for service in SERVICES[1:]:
        # Every service forgets the lead; the hashed address stays as a suppression record.
        answer = await common_pb2_grpc.AdminStub(m.channel(service)).EraseLead(
            common_pb2.EraseLeadRequest(lead_id=lead_id, email_hash=reply.email_hash), timeout=m.timeout)
        removed[service] = answer.removed
    return {"id": lead_id, "erased": True, "removed": removed}


def _entry(i: common_pb2.TimelineItem) -> TimelineEntry:
    entry: TimelineEntry = {"at": iso(i.at), "kind": i.kind, "type": i.type, "summary": i.summary, "id": i.id}
    if i.details_json:
        entry["details"] = details(i.details_json)
    return entry


@router.get("/{lead_id}/timeline", summary="Everything that happened to the lead, oldest first, with reasons")
async def timeline(lead_id: str, limit: int = Query(1000, ge=1, le=10000), m: Mesh = Depends(mesh)) -> Timeline:
    await scoring(m).GetLead(scoring_pb2.GetLeadRequest(id=lead_id), timeout=m.timeout)  # 404 for unknown

    async def part(service: str) -> list[common_pb2.TimelineItem]:
        try:
            reply = await common_pb2_grpc.AdminStub(m.channel(service)).Timeline(
                common_pb2.TimelineRequest(lead_id=lead_id, limit=limit), timeout=m.timeout)
        except grpc.aio.AioRpcError as exc:
            if service == "scoring":
                raise
            missing.append({"service": service, "status": exc.code().name})
            return []
        return list(reply.items)

    missing: list[Missing] = []
    parts = await asyncio.gather(*(part(s) for s in SERVICES))
    # Stable by time only: within one instant (common under a virtual clock) each service's own causal
    # order is kept, and the services follow the flow of a change: event, score, journey, message, crm.
    items = sorted((i for p in parts for i in p), key=lambda i: i.at.ToNanoseconds())
    body: Timeline = {"items": [_entry(i) for i in items[-limit:]]}
    if missing:
        body["incomplete"] = missing
    return body
