"""The console's segments' copy, in the templates' area: each segment's label, intro and website
recommendations with their versions, an editor (a draft saved with every problem listed), and publish.
A segment added as data (the scoring model, journeys) gets its copy here: a name without copy opens an
empty editor.

Included before templates_pages (gateway.routes.console): `/console/templates/segments/...` is not a
template key's page.
"""

from __future__ import annotations

import json
import re

import grpc
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway import roles
from gateway.console.editing import problems_of
from gateway.console.guard import guarded, mesh_of, redirect
from gateway.console.render import page
from gateway.console.session import Session
from gateway.deps import ApiError
from gateway.routes import template_segments as segments_api
from nurture.jsontypes import JsonObject

router = APIRouter(prefix="/console", include_in_schema=False)
# The scoring model's segment names as a path (the messaging service checks the same on save).
SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _version(raw: str | None) -> int:
    try:
        value = int(raw or 0)
    except ValueError as exc:
        raise ApiError(422, "invalid", "version must be a number") from exc
    if not 0 <= value < 2**31:
        raise ApiError(422, "invalid", "version must be a number")
    return value


def _fields_of(form: dict[str, str]) -> tuple[JsonObject, list[str]]:
    """The editor's fields as a segment's copy; the recommendations are a JSON list in their own box."""
    body: JsonObject = {f: form.get(f, "").replace("\r\n", "\n") for f in ("label", "intro")}
    try:
        recommended = json.loads(form.get("recommended_content", "").strip() or "[]")
    except ValueError as exc:
        return body, [f"recommended_content: not JSON: {exc}"]
    if not isinstance(recommended, list):
        return body, ['recommended_content: must be a JSON list [{"title": ..., "path": "/..."}]']
    body["recommended_content"] = recommended
    return body, []


async def _page(request: Request, current: Session, segment: str, version: int, *, form: dict[str, str] | None = None,
                notice: str = "", problems: list[str] | None = None, status: int = 200) -> Response:
    try:
        detail: segments_api.SegmentCopy | None = await segments_api.get_segment(mesh_of(request), segment, version)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND or version:
            raise
        detail = None   # a segment without copy of its own: the editor starts empty
    if form is None:
        form = {"label": detail["label"] if detail else "", "intro": detail["intro"] if detail else "",
                "recommended_content": json.dumps(detail["recommended_content"] if detail else [], indent=2)}
    return page("segment_copy.html", status=status, session=current, title=f"Segment {segment}", segment=segment,
                s=detail, form=form, notice=notice, problems=problems or [],
                can_edit=roles.allows(current.role, "editor"))


@router.get("/templates/segments")
async def open_segment(request: Request) -> Response:
    """The templates page's "another segment" box: that segment's page (an empty editor when it has no copy)."""
    async def handler(_request: Request, _current: Session) -> Response:
        segment = request.query_params.get("segment", "").strip()
        if not SEGMENT.fullmatch(segment):
            raise ApiError(422, "invalid", "a segment is 1-64 of letters, digits, _ and -")
        return redirect(f"/console/templates/segments/{segment}")
    return await guarded(request, handler)


@router.get("/templates/segments/{segment}")
async def segment_copy(request: Request, segment: str) -> Response:
    async def handler(_request: Request, current: Session) -> Response:
        return await _page(request, current, segment, _version(request.query_params.get("version")))
    return await guarded(request, handler)


@router.post("/templates/segments/{segment}")
async def save(request: Request, segment: str) -> Response:
    async def handler(_request: Request, current: Session) -> Response:
        form = request.state.form
        body, problems = _fields_of(form)
        version = 0
        if not problems:
            try:
                version = await segments_api.put_draft(mesh_of(request), segment, body)
            except grpc.aio.AioRpcError as exc:
                problems = problems_of(exc)
            except ApiError as exc:
                problems = [str(p) for p in (exc.details or {}).get("problems", [exc.message])]
        if problems:
            return await _page(request, current, segment, 0, form=form, problems=problems, status=422)
        return await _page(request, current, segment, version,
                           notice=f"Version {version} is saved as a draft: publish it for the next send to use it.")
    return await guarded(request, handler, needed="editor", form=True)


@router.post("/templates/segments/{segment}/publish")
async def publish(request: Request, segment: str) -> Response:
    async def handler(_request: Request, current: Session) -> Response:
        version = _version(request.state.form.get("version"))
        if version < 1:
            raise ApiError(422, "invalid", "choose a version to publish")
        await segments_api.publish(mesh_of(request), segment, version)
        return await _page(request, current, segment, 0,
                           notice=f"Version {version} is published: the next send uses it.")
    return await guarded(request, handler, needed="editor", form=True)
