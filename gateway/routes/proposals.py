"""Proposals (crm_sync's Proposals service): sales make and send them with an API key; the prospect reads
theirs at `/p/<token>`, a link signed by crm_sync (an unknown or tampered token is the same 404)."""

from __future__ import annotations

from typing import NotRequired

import grpc
from fastapi import APIRouter, Depends, Response
from fastapi.responses import HTMLResponse

from gateway.deps import ApiError, Mesh, json_body, mesh, optional_json_body, require_key
from gateway.shapes import DocumentedRoute, TypedDict
from nurture import times
from nurture.api.crm_sync.v1 import crm_sync_pb2, crm_sync_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.jsontypes import JsonObject, JsonValue

router = APIRouter(tags=["proposals"])
keyed = APIRouter(prefix="/v1", tags=["proposals"], dependencies=[Depends(require_key)], route_class=DocumentedRoute)


class ProposalLine(TypedDict):
    kind: str
    key: str
    name: str
    price: float
    rule: str   # the rule of proposals.yaml that put it there


class Proposal(TypedDict):
    id: str
    lead_id: str
    deal_id: str | None
    plan: str
    lines: list[ProposalLine]
    pathways: list[str]
    total: float
    currency: str
    created_at: str
    valid_until: str
    url: str
    status: str
    message_id: str | None
    task_id: str | None
    html: NotRequired[str]   # the document: only when one proposal is read


class ProposalList(TypedDict):
    proposals: list[Proposal]


class ProposalMade(TypedDict):
    proposal: Proposal
    duplicate: bool   # the deal's existing proposal (200)


class ProposalSent(TypedDict):
    message_id: str | None
    status: str   # messaging's answer: scheduled | sent | suppressed | failed | duplicate
    reason: str

# The document is ours (every value the lead supplied is escaped when it is rendered); it needs its own
# inline style and nothing else: no script, no form, no frame, and the token in the address never leaks
# through a Referer.
DOCUMENT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "private, no-store",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
}


def stub(m: Mesh) -> crm_sync_pb2_grpc.ProposalsStub:
    return crm_sync_pb2_grpc.ProposalsStub(m.channel("crm_sync"))


def proposal_json(p: crm_sync_pb2.Proposal, *, with_html: bool = False) -> Proposal:
    out: Proposal = {
        "id": p.id, "lead_id": p.lead_id, "deal_id": p.deal_id or None, "plan": p.plan,
        "lines": [{"kind": ln.kind, "key": ln.key, "name": ln.name, "price": ln.price, "rule": ln.rule}
                  for ln in p.lines],
        "pathways": list(p.pathways), "total": p.total, "currency": p.currency,
        "created_at": times.rfc3339(p.created_at.ToDatetime()),
        "valid_until": times.rfc3339(p.valid_until.ToDatetime()),
        "url": p.url, "status": p.status, "message_id": p.message_id or None, "task_id": p.task_id or None,
    }
    if with_html:
        out["html"] = p.html
    return out


def _text(body: JsonObject, name: str, problems: dict[str, str]) -> str:
    value = body.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 128:
        problems[name] = "must be a string of at most 128 characters"
        return ""
    return value.strip()


@keyed.get("/leads/{lead_id}/proposals")
async def list_proposals(lead_id: str, m: Mesh = Depends(mesh)) -> ProposalList:
    # An unknown (or erased) lead is 404 like its other resources (timeline, messages), not an empty list.
    await scoring_pb2_grpc.ScoringStub(m.channel("scoring")).GetLead(scoring_pb2.GetLeadRequest(id=lead_id),
                                                                     timeout=m.timeout)
    reply = await stub(m).ListProposals(crm_sync_pb2.ListProposalsRequest(lead_id=lead_id), timeout=m.timeout)
    return {"proposals": [proposal_json(p) for p in reply.proposals]}


@keyed.post("/leads/{lead_id}/proposals", status_code=201,
            responses={200: {"model": ProposalMade, "description": "the deal's existing proposal"}})
async def generate_proposal(lead_id: str, response: Response, body: JsonValue = Depends(json_body),
                            m: Mesh = Depends(mesh)) -> ProposalMade:
    """`{"plan"?, "deal_id"?}` → 201 with the new proposal; 200 with the deal's existing one."""
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object")
    problems: dict[str, str] = {}
    plan, deal_id = _text(body, "plan", problems), _text(body, "deal_id", problems)
    unknown = sorted(set(body) - {"plan", "deal_id"})
    if unknown:
        problems.update({k: "is not a field of a proposal request" for k in unknown})
    if problems:
        raise ApiError(422, "invalid", "; ".join(f"{k} {v}" for k, v in problems.items()), {"fields": problems})
    reply = await stub(m).GenerateProposal(crm_sync_pb2.ProposalRequest(
        lead_id=lead_id, plan=plan, deal_id=deal_id, requested_by="api"), timeout=m.timeout)
    if reply.duplicate:
        response.status_code = 200
    return {"proposal": proposal_json(reply.proposal), "duplicate": reply.duplicate}


@keyed.get("/proposals/{proposal_id}")
async def get_proposal(proposal_id: str, m: Mesh = Depends(mesh)) -> Proposal:
    p = await stub(m).GetProposal(crm_sync_pb2.GetProposalRequest(id=proposal_id), timeout=m.timeout)
    return proposal_json(p, with_html=True)


@keyed.post("/proposals/{proposal_id}/send")
async def send_proposal(proposal_id: str, body: JsonValue = Depends(optional_json_body),
                        m: Mesh = Depends(mesh)) -> ProposalSent:
    """`{}` or no body → emails the proposal to the prospect (once: a second call answers `duplicate`)."""
    if not isinstance(body, dict) or body:
        raise ApiError(422, "invalid", "the body must be an empty JSON object: {}")
    r = await stub(m).SendProposal(crm_sync_pb2.SendProposalRequest(id=proposal_id), timeout=m.timeout)
    return {"message_id": r.message_id or None, "status": r.status, "reason": r.reason}


@router.get("/p/{token}", response_class=HTMLResponse, include_in_schema=True)
async def read_proposal(token: str, m: Mesh = Depends(mesh)) -> HTMLResponse:
    """The prospect's own link (no key): the document, or 404 for any link that is not one we signed."""
    if len(token) > 200:
        return HTMLResponse("<!doctype html><title>Not found</title><p>This link is not valid.</p>", 404,
                            headers=DOCUMENT_HEADERS)
    try:
        p = await stub(m).GetProposal(crm_sync_pb2.GetProposalRequest(token=token), timeout=m.timeout)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return HTMLResponse("<!doctype html><title>Not found</title><p>This link is not valid.</p>", 404,
                                headers=DOCUMENT_HEADERS)
        raise
    return HTMLResponse(p.html, headers=DOCUMENT_HEADERS)


router.include_router(keyed)
