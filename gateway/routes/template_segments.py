"""Segments' copy as versioned data, beside the templates that use it: list, get with versions, put a
draft (422 with every problem), publish. A segment added as data (the scoring model, journeys) gets its
name in emails (`segment_label`), its intro paragraph and its website recommendations here, without a
deploy; one without copy of its own gets `_default`'s.

This module's routes are included before templates.py's (modules are included by name), so
`/v1/templates/segments` is not read as a template key.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Query, Response

from gateway.convert import iso, require_object
from gateway.deps import ApiError, Mesh, json_body, mesh, require_key
from gateway.shapes import DocumentedRoute, TypedDict
from nurture import limits
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.jsontypes import JsonObject, JsonValue

router = APIRouter(prefix="/v1/templates/segments", tags=["templates"], dependencies=[Depends(require_key)],
                   route_class=DocumentedRoute)

COPY_FIELDS = ("label", "intro", "recommended_content")


def _stub(m: Mesh) -> messaging_pb2_grpc.MessagingStub:
    return messaging_pb2_grpc.MessagingStub(m.channel("messaging"))


class SegmentCopySummary(TypedDict):
    segment: str
    label: str                       # the published version's (the latest's when none is)
    published_version: int | None    # null: never published
    latest_version: int
    updated_at: str | None


class SegmentCopyList(TypedDict):
    items: list[SegmentCopySummary]


class Recommendation(TypedDict):
    title: str
    path: str


class CopyVersion(TypedDict):
    version: int
    status: str    # draft | published | superseded
    source: str    # seed | api
    created_at: str | None
    published_at: str | None


class SegmentCopy(SegmentCopySummary):
    """A version of a segment's copy; `label` is the version's."""

    version: int
    status: str
    intro: str   # Jinja2
    recommended_content: list[Recommendation]
    versions: list[CopyVersion]


class CopyValidated(TypedDict):
    segment: str
    valid: bool
    problems: list[str]


class CopyStored(TypedDict):
    segment: str
    version: int
    status: str   # draft


class CopyPublished(TypedDict):
    segment: str
    version: int
    previous_version: int | None   # null: none was live


def _summary(s: messaging_pb2.SegmentCopySummary) -> SegmentCopySummary:
    return {"segment": s.segment, "label": s.label, "published_version": s.published_version or None,
            "latest_version": s.latest_version, "updated_at": iso(s.updated_at, s.HasField("updated_at"))}


def copy_message(body: JsonObject) -> messaging_pb2.SegmentCopy:
    """A draft's fields as the RPC takes them; 422 for a field of the wrong type (the service checks the rest)."""
    wrong = {f: "is not a field of a segment's copy" for f in sorted(set(body) - set(COPY_FIELDS))}
    wrong.update({f: "must be text" for f in ("label", "intro") if f in body and not isinstance(body[f], str)})
    if "recommended_content" in body and not isinstance(body["recommended_content"], list):
        wrong["recommended_content"] = "must be a list of {title, path}"
    if wrong:
        raise ApiError(422, "invalid", "; ".join(f"{k} {v}" for k, v in wrong.items()),
                       {"fields": wrong, "problems": [f"{k}: {v}" for k, v in wrong.items()]})
    return messaging_pb2.SegmentCopy(label=str(body.get("label", "")), intro=str(body.get("intro", "")),
                                     recommended_content_json=json.dumps(body.get("recommended_content") or []))


async def list_segments(m: Mesh) -> list[SegmentCopySummary]:
    reply = await _stub(m).ListSegmentCopy(messaging_pb2.ListSegmentCopyRequest(), timeout=m.timeout)
    return [_summary(s) for s in reply.items]


async def get_segment(m: Mesh, segment: str, version: int = 0) -> SegmentCopy:
    r = await _stub(m).GetSegmentCopy(messaging_pb2.GetSegmentCopyRequest(segment=segment, version=version),
                                      timeout=m.timeout)
    return {**_summary(r.summary), "label": r.copy.label, "version": r.version, "status": r.status,
            "intro": r.copy.intro, "recommended_content": json.loads(r.copy.recommended_content_json or "[]"),
            "versions": [{"version": v.version, "status": v.status, "source": v.source,
                          "created_at": iso(v.created_at, v.HasField("created_at")),
                          "published_at": iso(v.published_at, v.HasField("published_at"))} for v in r.versions]}


async def put_draft(m: Mesh, segment: str, body: JsonObject, validate_only: bool = False) -> int:
    reply = await _stub(m).PutSegmentCopy(messaging_pb2.PutSegmentCopyRequest(
        segment=segment, copy=copy_message(body), validate_only=validate_only), timeout=m.timeout)
    return int(reply.version)


async def publish(m: Mesh, segment: str, version: int) -> messaging_pb2.PublishSegmentCopyReply:
    reply: messaging_pb2.PublishSegmentCopyReply = await _stub(m).PublishSegmentCopy(
        messaging_pb2.PublishSegmentCopyRequest(segment=segment, version=version), timeout=m.timeout)
    return reply


@router.get("", summary="Every segment's copy: its label in emails, its intro and its website recommendations")
async def list_copy(m: Mesh = Depends(mesh)) -> SegmentCopyList:
    return {"items": await list_segments(m)}


@router.get("/{segment}", summary="A segment's copy (the published version unless one is named) and versions")
async def get_copy(segment: str, version: int = Query(0, ge=0, le=limits.INT32_MAX),
                   m: Mesh = Depends(mesh)) -> SegmentCopy:
    return await get_segment(m, segment, version)


@router.put("/{segment}", summary="Store a new draft of a segment's copy (422 lists every problem)",
            responses={200: {"model": CopyValidated}, 201: {"model": CopyStored}})
async def put_copy(segment: str, response: Response, validate_only: bool = Query(False),
                   body: JsonValue = Depends(json_body), m: Mesh = Depends(mesh)) -> CopyValidated | CopyStored:
    version = await put_draft(m, segment, require_object(body, "segment copy"), validate_only)
    if validate_only:
        return {"segment": segment, "valid": True, "problems": []}
    response.status_code = 201
    response.headers["Location"] = f"/v1/templates/segments/{segment}?version={version}"
    return {"segment": segment, "version": version, "status": "draft"}


@router.post("/{segment}/publish", summary="Make a version of a segment's copy live for the next send")
async def publish_copy(segment: str, body: JsonValue = Depends(json_body), m: Mesh = Depends(mesh)) -> CopyPublished:
    body = require_object(body)
    problem = limits.check_int(body.get("version"), "version", low=1)
    if problem:
        raise ApiError(422, "invalid", "version is required: an integer from 1", {"fields": problem})
    r = await publish(m, segment, int(body["version"]))   # type: ignore[arg-type]
    return {"segment": r.segment, "version": r.version, "previous_version": r.previous_version or None}
