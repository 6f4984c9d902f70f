"""What the console's pages show, read through the functions that answer the /v1 API (so a page and the
API agree by construction) and the gateway's gRPC clients; the gateway never reads a service's tables."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from gateway.convert import Lead, lead_json
from gateway.deps import ApiError, Mesh
from gateway.routes import analytics as analytics_api
from gateway.routes import journeys as journeys_api
from gateway.routes import leads as leads_api
from gateway.routes import messaging as messaging_api
from gateway.shapes import TypedDict
from nurture import bus, redisconn
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.journeys.v1 import journeys_pb2, journeys_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.jsontypes import JsonMapping, JsonObject, JsonValue
from nurture.rpc import health_status
from nurture.settings import SERVICES

PAGE_SIZE = 50
# Fields of a timeline item's details that say why it happened, in the order a person reads them.
REASON_FIELDS = ("reason", "why", "rule", "branch", "condition", "status", "error")


class JourneyRow(journeys_api.JourneySummary):
    """A journey with its all-time counts (from its analytics report; absent when journeys did not answer)."""

    enrolled: JsonValue
    goals: JsonValue
    completed: JsonValue
    exited: JsonValue


class ScorePoint(TypedDict):
    at: str
    score: int
    delta: int
    rule: str
    reason: str


class TimelineRow(leads_api.TimelineEntry):
    reason: str   # the fields of its details that say why, for a person


class LeadView(TypedDict):
    lead: leads_api.LeadWithSubscriptions
    score_points: list[ScorePoint]
    score_json: str
    timeline: list[TimelineRow]
    incomplete: list[leads_api.Missing]
    messages: list[messaging_api.Message] | None   # None: messaging is down


class ServiceRow(TypedDict):
    name: str
    address: str
    status: str
    counters: dict[str, int] | None


class Operations(TypedDict):
    services: list[ServiceRow]
    groups: list[bus.GroupLag] | None   # None: Redis did not answer


def readable_error(text: str) -> str:
    """A service's error text for a person: the message of a JSON error body, else the text."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        problems = (parsed.get("details") or {}).get("problems")
        extra = f": {'; '.join(map(str, problems))}" if isinstance(problems, list) and problems else ""
        message: str = parsed["message"]
        return (message + extra)[:2000]
    return text[:500]


async def journeys_with_counts(m: Mesh) -> list[JourneyRow]:
    """Every journey with its all-time counts from the analytics report (the API's numbers)."""
    listed = await journeys_api.list_journeys(m)

    async def counts(key: str) -> JsonObject:
        try:
            return await journeys_api.journey_counts(key, m)
        except grpc.aio.AioRpcError:
            return {}
    reports = await asyncio.gather(*(counts(j["key"]) for j in listed["items"]))
    return [{**j, "enrolled": r.get("enrolled"), "goals": r.get("goals"), "completed": r.get("completed"),
             "exited": r.get("exited")} for j, r in zip(listed["items"], reports, strict=True)]


async def journey_stages(m: Mesh, key: str, start: str | None, end: str | None) -> list[JsonObject] | None:
    """The journey's stages' conversion and velocity over the range: the progression report's `stages`
    rows for `journey=key` (analytics' maintained aggregates, the numbers /v1/analytics/progression
    answers); None when analytics does not answer (the page still draws the graph)."""
    try:
        body = await analytics_api.progression_tables(start, end, None, key, ("stages",), m)
    except grpc.aio.AioRpcError as exc:
        if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise
        return None
    rows = body.get("stages")
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


async def journey_keys(m: Mesh) -> list[str]:
    try:
        return [j["key"] for j in (await journeys_api.list_journeys(m))["items"]]
    except grpc.aio.AioRpcError:
        return []


@dataclass(frozen=True)
class LeadFilters:
    segment: str = ""
    stage: str = ""
    min_score: int | None = None
    journey: str = ""
    step: str = ""
    q: str = ""   # a search: the start of an email, first or last name (GET /v1/leads?q=)
    cursor: str = ""

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> LeadFilters:
        raw = (query.get("min_score") or "").strip()
        try:
            min_score = int(raw) if raw else None
        except ValueError as exc:
            raise ApiError(422, "invalid", "min_score must be a whole number") from exc
        if min_score is not None and not -(2**31) <= min_score < 2**31:
            raise ApiError(422, "invalid", "min_score is out of range")
        return cls(segment=query.get("segment", "").strip(), stage=query.get("stage", "").strip(),
                   min_score=min_score, journey=query.get("journey", "").strip(),
                   step=query.get("step", "").strip(),
                   # `email=`: the search's name in links made before it matched more than the address
                   q=(query.get("q") or query.get("email") or "").strip(),
                   cursor=query.get("cursor", ""))


async def leads_page(m: Mesh, f: LeadFilters) -> tuple[list[Lead], str | None]:
    """A page of leads through the API's own listings: the journey's members now at a step
    (`/v1/journeys/{key}/members?step=`) when a step is chosen, else `/v1/leads`."""
    if f.journey and f.step:
        members = await journeys_api.journey_members(f.journey, stage="", status="", step=f.step, cursor=f.cursor,
                                                     limit=PAGE_SIZE, m=m)
        got = await scoring_pb2_grpc.ScoringStub(m.channel("scoring")).GetLeads(
            scoring_pb2.GetLeadsRequest(ids=list(members["items"])), timeout=m.timeout)
        leads = [lead_json(lead) for lead in got.leads
                 if (not f.segment or lead.segment == f.segment) and (not f.stage or lead.lifecycle_stage == f.stage)
                 and (f.min_score is None or lead.score >= f.min_score) and (not f.q or leads_api.matches(lead, f.q))]
        return leads, members["next_cursor"]
    body = await leads_api.list_leads(segment=f.segment, min_score=f.min_score, stage=f.stage, journey=f.journey,
                                      email="", q=f.q, cursor=f.cursor, limit=PAGE_SIZE, m=m)
    return body["items"], body["next_cursor"]


async def waiting_by_step(m: Mesh, journey: str) -> dict[str, int]:
    """Leads at each step of the journey now (live enrolments), from the journeys service."""
    reply = await journeys_pb2_grpc.JourneysStub(m.channel("journeys")).LiveSteps(
        journeys_pb2.LiveStepsRequest(journey=journey), timeout=m.timeout)
    return dict(reply.leads)


def _reason(details: JsonMapping) -> str:
    parts = [f"{name}: {details[name]}" for name in REASON_FIELDS
             if name in details and details[name] not in (None, "", [], {})]
    return "; ".join(str(p) for p in parts)


async def lead_view(m: Mesh, lead_id: str) -> LeadView:
    """Profile, score history, journeys, messages and the merged timeline of one lead."""
    lead = await leads_api.get_lead(lead_id, m)
    history, timeline, messages = await asyncio.gather(
        scoring_pb2_grpc.ScoringStub(m.channel("scoring")).ScoreHistory(
            scoring_pb2.ScoreHistoryRequest(lead_id=lead_id, limit=1000), timeout=m.timeout),
        leads_api.timeline(lead_id, 1000, m),
        _messages(m, lead_id))
    points: list[ScorePoint] = [{"at": c.at.ToJsonString(), "score": c.score_after, "delta": c.delta, "rule": c.rule,
               "reason": c.reason} for c in history.changes]
    entries: list[TimelineRow] = [{**item, "reason": _reason(item.get("details") or {})} for item in timeline["items"]]
    return {"lead": lead, "score_points": points, "score_json": json.dumps(points), "timeline": entries,
            "incomplete": timeline.get("incomplete", []), "messages": messages}


async def why_not(m: Mesh, lead_id: str, journey: str) -> JsonObject:
    """Which of the journey's entry conditions and branch rules the lead does not meet today."""
    reply = await journeys_pb2_grpc.JourneysStub(m.channel("journeys")).WhyNot(
        journeys_pb2.WhyNotRequest(lead_id=lead_id, journey=journey), timeout=m.timeout)
    report: JsonObject = json.loads(reply.report_json)   # the journeys service's
    return report


async def _messages(m: Mesh, lead_id: str) -> list[messaging_api.Message] | None:
    try:
        items = (await messaging_api.lead_messages(lead_id, 1000, m))["items"]
    except grpc.aio.AioRpcError:
        return None  # messaging is down: the rest of the lead is still worth showing
    return items


async def operations_view(m: Mesh) -> Operations:
    """Service health and counters (gRPC health and Admin.Stats), and the bus's lag and dead letters
    per consumer group (read from Redis, the bus itself)."""
    addresses = {s: m.settings.address_of(s) for s in SERVICES}
    statuses = await asyncio.gather(*(health_status(a) for a in addresses.values()))

    async def stats(service: str) -> dict[str, int] | None:
        try:
            reply = await common_pb2_grpc.AdminStub(m.channel(service)).Stats(common_pb2.StatsRequest(),
                                                                              timeout=m.timeout)
        except grpc.aio.AioRpcError:
            return None
        return dict(sorted(reply.counters.items()))
    counters = await asyncio.gather(*(stats(s) for s in SERVICES))
    services: list[ServiceRow] = [{"name": s, "address": addresses[s], "status": st, "counters": c}
                for s, st, c in zip(SERVICES, statuses, counters, strict=True)]
    try:
        client = redisconn.connect(m.settings)
        try:
            groups: list[bus.GroupLag] | None = await bus.lag(client, m.settings.bus_shards)
        finally:
            await client.aclose()
    except OSError:
        groups = None
    except Exception as exc:  # redis errors: the page still shows the services
        if "redis" not in type(exc).__module__:
            raise
        groups = None
    return {"services": services, "groups": groups}
