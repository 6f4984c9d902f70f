"""The scoring model as data over HTTP: see the live model and its versions, store a draft (422 with
every problem), publish a version with an optional dry run (which leads would change grade or stage)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Query, Response

from gateway.convert import require_object
from gateway.deps import ApiError, Mesh, json_body, mesh, require_key
from gateway.routes.journeys import definition_body
from gateway.shapes import DocumentedRoute, TypedDict
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.jsontypes import JsonValue
from nurture.rpc import LONG_DEADLINE_S

router = APIRouter(tags=["scoring"], dependencies=[Depends(require_key)], route_class=DocumentedRoute)


class ScoringModel(TypedDict):
    name: str
    version: int   # the live (published) version
    status: str
    definition: JsonValue   # the model document, as services/scoring/data/model.yaml holds it
    versions: JsonValue     # scoring's list of versions: [{version, status, created_at, published_at}]


class ModelValidated(TypedDict):
    valid: bool
    problems: list[str]


class ModelDraftStored(TypedDict):
    version: int
    status: str   # draft


class ModelPublished(TypedDict):
    version: int
    dry_run: bool
    leads: int          # leads looked at
    grade_changes: int
    stage_changes: int
    changes: JsonValue  # scoring's first 100 changes: [{lead_id, grade: [old, new], lifecycle_stage: [old, new]}]
    status: str         # draft (a dry run) | published


def _stub(m: Mesh) -> scoring_pb2_grpc.ScoringStub:
    return scoring_pb2_grpc.ScoringStub(m.channel("scoring"))


async def put_draft(m: Mesh, document: JsonValue, *, validate_only: bool = False) -> tuple[int, list[str]]:
    """Store `document` as the next draft: (version, []), or (0, every problem). `validate_only` checks
    the same way (compiling included) and stores nothing: (0, []) when it is valid."""
    reply = await _stub(m).PutScoringModel(scoring_pb2.PutScoringModelRequest(
        definition_json=json.dumps(document, default=str), validate_only=validate_only), timeout=m.timeout)
    return reply.version, list(reply.problems)


@router.get("/v1/scoring/model", summary="The live scoring model (every rule, its points and why) and its versions")
async def get_model(m: Mesh = Depends(mesh)) -> ScoringModel:
    reply = await _stub(m).GetScoringModel(scoring_pb2.ScoringModelRequest(), timeout=m.timeout)
    return {"name": reply.name, "version": reply.version, "status": "published",
            "definition": json.loads(reply.definition_json),
            "versions": json.loads(reply.versions_json or "[]")}


@router.put("/v1/scoring/model", summary="Store a draft of the scoring model as the next version (422 lists every "
                                         "problem); with validate_only, check it and store nothing",
            responses={200: {"model": ModelValidated}, 201: {"model": ModelDraftStored}})
async def put_model(response: Response, validate_only: bool = Query(False), body: JsonValue = Depends(definition_body),
                    m: Mesh = Depends(mesh)) -> ModelValidated | ModelDraftStored:
    document = require_object(body, "definition")
    if isinstance(document.get("definition"), dict) and "behaviour" not in document:
        document = document["definition"]
    version, problems = await put_draft(m, document, validate_only=validate_only)
    if problems:
        raise ApiError(422, "invalid_model", f"the scoring model has {len(problems)} problem(s)",
                       {"problems": problems})
    if validate_only:
        return {"valid": True, "problems": []}
    response.status_code = 201
    response.headers["Location"] = "/v1/scoring/model"
    return {"version": version, "status": "draft"}


@router.post("/v1/scoring/model/publish", summary="Make a stored version live; with dry_run, only say which leads "
                                                  "would change grade or lifecycle stage")
async def publish_model(body: JsonValue = Depends(json_body), m: Mesh = Depends(mesh)) -> ModelPublished:
    body = require_object(body)
    version, dry_run = body.get("version"), body.get("dry_run", False)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= 2**31 - 1:
        raise ApiError(422, "invalid", "version must be a stored version number", {"fields": {"version": "1.."}})
    if not isinstance(dry_run, bool):
        raise ApiError(422, "invalid", "dry_run must be true or false", {"fields": {"dry_run": "boolean"}})
    reply = await _stub(m).PublishScoringModel(scoring_pb2.PublishScoringModelRequest(
        version=version, dry_run=dry_run), timeout=LONG_DEADLINE_S)
    return {"version": reply.version, "dry_run": reply.dry_run, "leads": reply.leads,
            "grade_changes": reply.grade_changes, "stage_changes": reply.stage_changes,
            "changes": json.loads(reply.changes_json or "[]"), "status": "draft" if reply.dry_run else "published"}
