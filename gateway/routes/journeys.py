"""Journeys: definitions (list, get, put draft → 422 with every problem, publish with optional migration
and dry run), analytics from recorded history, and simulations in virtual time."""

from __future__ import annotations

import json

import yaml
from fastapi import APIRouter, Depends, Query, Request, Response

from gateway.convert import DraftStored, Validated, VersionInfo, details, iso, parse_bound, require_object
from gateway.deps import ApiError, Mesh, json_body, mesh, require_key
from gateway.routes.leads import decode_cursor, encode_cursor
from gateway.shapes import DocumentedRoute, TypedDict
from nurture import limits
from nurture.api.journeys.v1 import journeys_pb2, journeys_pb2_grpc
from nurture.jsontypes import JsonObject, JsonValue
from nurture.rpc import LONG_DEADLINE_S

router = APIRouter(tags=["journeys"], dependencies=[Depends(require_key)], route_class=DocumentedRoute)


class JourneySummary(TypedDict):
    key: str
    name: str
    kind: str   # segment | engagement | sequence
    mode: str   # flow | always_on
    priority: int
    published_version: int | None   # null: never published
    latest_version: int
    status: str   # published | draft | archived


class JourneyList(TypedDict):
    items: list[JourneySummary]


class Journey(JourneySummary):
    version: int
    definition: JsonValue   # the definition document, as services/journeys/data/playbook/<key>.yaml holds it
    versions: list[VersionInfo]


class Archived(TypedDict):
    key: str
    status: str    # archived | published
    version: int   # the version archived (or brought back)
    changed: bool  # false: it already was so (the call is idempotent)


class CountedLead(TypedDict):
    lead_id: str
    times: int


class CountedLeads(TypedDict):
    journey: str
    step: str | None
    measure: str
    reason: str | None
    total: int         # the count: the sum of `times` over every page
    leads_total: int   # distinct leads over every page
    items: list[CountedLead]
    next_cursor: str | None


class Members(TypedDict):
    items: list[str]   # lead ids
    next_cursor: str | None
ENROLMENT_STATUSES = ("active", "paused", "completed", "exited")


def _stub(m: Mesh) -> journeys_pb2_grpc.JourneysStub:
    return journeys_pb2_grpc.JourneysStub(m.channel("journeys"))


async def definition_body(request: Request) -> JsonValue:
    """JSON, or YAML when the Content-Type says so: the playbook is kept as YAML, so a file from
    services/journeys/data/playbook can be PUT as it is."""
    if "yaml" not in request.headers.get("content-type", "").lower():
        return await json_body(request)
    raw = await request.body()
    try:
        document = yaml.safe_load(raw)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed", f"the body is not valid YAML: {limits.shown(str(exc))}") from exc
    except RecursionError as exc:  # PyYAML composes recursively: a deep document ends here
        raise ApiError(422, "invalid", f"the body nests deeper than {limits.MAX_DEPTH} levels") from exc
    if document is None:
        raise ApiError(400, "malformed", "a YAML body is required")
    problems = limits.problems_in(document)
    if problems:
        raise ApiError(422, "invalid", "; ".join(f"{k} {v}" for k, v in problems.items()), {"fields": problems})
    return document


def _summary(s: journeys_pb2.JourneySummary) -> JourneySummary:
    return {"key": s.key, "name": s.name, "kind": s.kind, "mode": s.mode or "flow", "priority": s.priority,
            "published_version": s.published_version or None, "latest_version": s.latest_version,
            "status": s.status}


@router.get("/v1/journeys", summary="Every journey with its published version and status")
async def list_journeys(m: Mesh = Depends(mesh)) -> JourneyList:
    reply = await _stub(m).ListJourneys(journeys_pb2.ListJourneysRequest(), timeout=m.timeout)
    return {"items": [_summary(s) for s in reply.journeys]}


@router.get("/v1/journeys/{key}", summary="A journey's definition and its versions")
async def get_journey(key: str, version: int = Query(0, ge=0, le=limits.INT32_MAX),
                      m: Mesh = Depends(mesh)) -> Journey:
    reply = await _stub(m).GetJourney(journeys_pb2.GetJourneyRequest(key=key, version=version), timeout=m.timeout)
    return {**_summary(reply.summary), "version": reply.version, "definition": details(reply.definition_json),
            "versions": [{"version": v.version, "status": v.status,
                          "created_at": iso(v.created_at, v.HasField("created_at")),
                          "published_at": iso(v.published_at, v.HasField("published_at"))} for v in reply.versions]}


@router.put("/v1/journeys/{key}", summary="Store a new draft version (422 lists every problem)",
            responses={200: {"model": Validated}, 201: {"model": DraftStored}})
async def put_journey(key: str, response: Response, validate_only: bool = Query(False),
                      body: JsonValue = Depends(definition_body),
                      m: Mesh = Depends(mesh)) -> Validated | DraftStored:
    document = require_object(body, "definition")
    if isinstance(document.get("definition"), dict) and "steps" not in document:
        document = document["definition"]
    reply = await _stub(m).PutJourney(journeys_pb2.PutJourneyRequest(
        key=key, definition_json=json.dumps(document, default=str), validate_only=validate_only), timeout=m.timeout)
    if validate_only:
        return {"key": key, "valid": True, "problems": []}
    # Every stored draft is a new version resource, so 201 with where to read it.
    response.status_code = 201
    response.headers["Location"] = f"/v1/journeys/{key}?version={reply.version}"
    return {"key": key, "version": reply.version, "status": "draft"}


@router.post("/v1/journeys/{key}/publish", summary="Publish a version, optionally migrating live leads")
async def publish_journey(key: str, body: JsonValue = Depends(json_body), m: Mesh = Depends(mesh)) -> JsonObject:
    """key, version and published, then the fields of the journeys service's migration report."""
    body = require_object(body)
    version = body.get("version", 0)
    mapping = body.get("step_mapping", body.get("mapping", {})) or {}
    if limits.check_int(version, "version", low=0):
        raise ApiError(422, "invalid", f"version must be an integer from 0 to {limits.INT32_MAX}",
                       {"fields": limits.check_int(version, "version", low=0)})
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise ApiError(422, "invalid", "step_mapping must map step ids to step ids",
                       {"fields": {"step_mapping": "object of strings"}})
    reply = await _stub(m).Publish(journeys_pb2.PublishRequest(
        key=key, version=version, migrate=bool(body.get("migrate", False)), step_mapping=mapping,
        dry_run=bool(body.get("dry_run", False))), timeout=LONG_DEADLINE_S)
    return {"key": key, "version": reply.version, "published": reply.published, **details(reply.report_json)}


async def _archive(key: str, archived: bool, m: Mesh) -> Archived:
    reply = await _stub(m).Archive(journeys_pb2.ArchiveRequest(key=key, archived=archived), timeout=LONG_DEADLINE_S)
    return {"key": key, "status": reply.status, "version": reply.version, "changed": reply.changed}


@router.post("/v1/journeys/{key}/archive", summary="Archive a journey: it enters no one, its live leads exit")
async def archive_journey(key: str, m: Mesh = Depends(mesh)) -> Archived:
    return await _archive(key, True, m)


@router.post("/v1/journeys/{key}/unarchive", summary="Bring an archived journey back (its archived version)")
async def unarchive_journey(key: str, m: Mesh = Depends(mesh)) -> Archived:
    return await _archive(key, False, m)


@router.get("/v1/journeys/{key}/analytics", summary="Funnel per step and stage from recorded history")
async def journey_analytics(key: str, from_: str | None = Query(None, alias="from"), to: str | None = None,
                            m: Mesh = Depends(mesh)) -> JsonObject:
    request = journeys_pb2.AnalyticsRequest(key=key)
    if from_:
        getattr(request, "from").FromDatetime(parse_bound(from_, "from"))
    if to:
        request.to.FromDatetime(parse_bound(to, "to", end=True))
    reply = await _stub(m).Analytics(request, timeout=LONG_DEADLINE_S)
    result: JsonObject = json.loads(reply.report_json)   # the journeys service's report
    return result


async def journey_counts(key: str, m: Mesh) -> JsonObject:
    """The journey's all-time counts without the stage table: what the console's graph and journey list
    show (the same numbers as /v1/journeys/{key}/analytics, read with less)."""
    reply = await _stub(m).Analytics(journeys_pb2.AnalyticsRequest(key=key, without_stages=True),
                                     timeout=LONG_DEADLINE_S)
    result: JsonObject = json.loads(reply.report_json)
    return result


@router.get("/v1/journeys/{key}/analytics/leads", summary="The leads behind one count of the journey's analytics")
async def counted_leads(key: str, measure: str, step: str = "", reason: str = "",
                        from_: str | None = Query(None, alias="from"), to: str | None = None, cursor: str = "",
                        limit: int = Query(100, ge=1, le=1000), m: Mesh = Depends(mesh)) -> CountedLeads:
    request = journeys_pb2.CountedLeadsRequest(journey=key, step=step, measure=measure, reason=reason,
                                               limit=limit)
    if from_:
        getattr(request, "from").FromDatetime(parse_bound(from_, "from"))
    if to:
        request.to.FromDatetime(parse_bound(to, "to", end=True))
    scope = f"counted:{key}:{step}:{measure}:{reason}"
    request.cursor = decode_cursor(scope, cursor)
    reply = await _stub(m).CountedLeads(request, timeout=LONG_DEADLINE_S)
    return {"journey": key, "step": step or None, "measure": measure, "reason": reason or None,
            "total": reply.total, "leads_total": reply.leads_total,
            "items": [{"lead_id": x.lead_id, "times": x.times} for x in reply.leads],
            "next_cursor": encode_cursor(scope, reply.next_cursor)}


@router.get("/v1/journeys/{key}/members", summary="Leads in a journey (optionally a stage, step and status)")
async def journey_members(key: str, stage: str = "", status: str = "", step: str = "", cursor: str = "",
                          limit: int = Query(100, ge=1, le=1000), m: Mesh = Depends(mesh)) -> Members:
    # As for leads: a stage the journey does not have, a status there is not, or a cursor no page
    # gave would only ever match nothing, so they are the caller's mistake (422), not an empty page.
    problems: dict[str, str] = {}
    if status and status not in ENROLMENT_STATUSES:
        problems["status"] = f"must be one of {', '.join(ENROLMENT_STATUSES)}"
    if stage:
        got = await _stub(m).GetJourney(journeys_pb2.GetJourneyRequest(key=key), timeout=m.timeout)
        stages = [str(x.get("id")) for x in json.loads(got.definition_json or "{}").get("stages") or []
                  if isinstance(x, dict)]
        if stage not in stages:
            problems["stage"] = f"must be one of {', '.join(stages)}"
    if problems:
        raise ApiError(422, "invalid", "; ".join(f"{k} {v}" for k, v in problems.items()), {"fields": problems})
    reply = await _stub(m).Members(journeys_pb2.MembersRequest(
        journey=key, stage=stage, status=status, step=step, cursor=decode_cursor(f"members:{key}", cursor),
        limit=limit),
        timeout=m.timeout)
    return {"items": list(reply.lead_ids), "next_cursor": encode_cursor(f"members:{key}", reply.next_cursor)}


@router.post("/v1/simulations", summary="Run journeys for synthetic leads in virtual time; returns the funnel")
async def simulate(response: Response, body: JsonValue = Depends(json_body), m: Mesh = Depends(mesh)) -> JsonObject:
    body = require_object(body)
    problems: dict[str, str] = {}
    for name in ("leads", "days", "seed"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            problems[name] = "must be a non-negative integer"
    chosen = body.get("journeys")
    if chosen is not None and (not isinstance(chosen, list) or not all(
            isinstance(j, str) or (isinstance(j, dict) and isinstance(j.get("key"), str)) for j in chosen)):
        problems["journeys"] = 'must be a list of journey keys or {"key", "version"} objects'
    else:
        for j in chosen or []:
            if isinstance(j, dict) and limits.check_int(j.get("version", 0), "version", low=0):
                problems["journeys"] = f"a version must be an integer from 0 to {limits.INT32_MAX}"
    if body.get("behaviour") is not None and not isinstance(body.get("behaviour"), dict):
        problems["behaviour"] = "must be an object"
    if problems:
        raise ApiError(422, "invalid", "; ".join(f"{k} {v}" for k, v in problems.items()), {"fields": problems})
    reply = await _stub(m).Simulate(journeys_pb2.SimulateRequest(request_json=json.dumps(body)),
                                    timeout=LONG_DEADLINE_S)
    result: JsonObject = json.loads(reply.report_json)   # the simulation's funnel report
    # The same request gives the same body, byte for byte: the run's wall time is a measurement of
    # this machine, not part of the funnel, so it goes in a header.
    wall = (result.get("engine") or {}).pop("wall_seconds", None)
    if wall is not None:
        response.headers["Server-Timing"] = f"simulate;dur={float(wall) * 1000:.0f}"
    return result

