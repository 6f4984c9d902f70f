"""The leads behind a count on the journey graph: the records a count is made of (step runs,
engagements, goals, exits, over the whole history as the graph counts them), through the same call as
GET /v1/journeys/{key}/analytics/leads, with each lead's profile from scoring. A count's page lists as
many records as the count says (the `times` column adds up to it); "waiting now" is the live
enrolments, which /console/leads?journey=&step= lists."""

from __future__ import annotations

import grpc
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.console.guard import guarded, mesh_of
from gateway.console.render import page
from gateway.console.session import Session
from gateway.convert import Lead, lead_json
from gateway.deps import Mesh
from gateway.routes import journeys as journeys_api
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc

router = APIRouter(prefix="/console", include_in_schema=False)
PAGE_SIZE = 50


async def _profiles(m: Mesh, ids: list[str]) -> dict[str, Lead]:
    """The leads' profiles where scoring has them (an erased lead keeps its records here, not there)."""
    if not ids:
        return {}
    try:
        got = await scoring_pb2_grpc.ScoringStub(m.channel("scoring")).GetLeads(
            scoring_pb2.GetLeadsRequest(ids=ids), timeout=m.timeout)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return {}
    return {lead.id: lead_json(lead) for lead in got.leads}


@router.get("/journeys/{key}/leads")
async def counted(request: Request, key: str) -> Response:
    async def handler(_request: Request, current: Session) -> Response:
        q = request.query_params
        m = mesh_of(request)
        step, measure, reason = q.get("step", ""), q.get("measure", ""), q.get("reason", "")
        listed = await journeys_api.counted_leads(key, measure, step=step, reason=reason, from_=q.get("from") or None,
                                                  to=q.get("to") or None, cursor=q.get("cursor", ""),
                                                  limit=PAGE_SIZE, m=m)
        profiles = await _profiles(m, [x["lead_id"] for x in listed["items"]])
        rows = [{**x, "lead": profiles.get(x["lead_id"])} for x in listed["items"]]
        return page("counted_leads.html", session=current, title=f"{key}: {measure}", key=key, listed=listed,
                    rows=rows, step=step, measure=measure, reason=reason, unavailable=not profiles and bool(rows))
    return await guarded(request, handler)
