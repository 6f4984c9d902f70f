"""Templates as versioned data: list (with the journeys that use each), get with versions, put a draft
(422 with every problem), publish, preview for a lead at desktop or phone width, and a test send.

Which journeys use a template comes from journeys (each summary names the templates its published version
sends); when journeys does not answer, `used_by` is null rather than the whole listing failing.
"""

from __future__ import annotations

import json
import logging

import grpc
from fastapi import APIRouter, Depends, Query, Response

from gateway.convert import DraftStored, Validated, iso, require_object
from gateway.deps import ApiError, Mesh, json_body, mesh, require_key
from gateway.shapes import DocumentedRoute, TypedDict
from nurture import limits
from nurture.api.journeys.v1 import journeys_pb2, journeys_pb2_grpc
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.jsontypes import JsonObject, JsonValue

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["templates"], dependencies=[Depends(require_key)],
                   route_class=DocumentedRoute)

WIDTHS = {"desktop": 600, "phone": 375}   # the viewport a preview is shown in (CSS pixels)
CONTENT_FIELDS = ("subject", "preheader", "body", "text", "topic", "format", "cta_label", "cta_path", "variants")
TEXT_FIELDS = CONTENT_FIELDS[:-1]


def _stub(m: Mesh) -> messaging_pb2_grpc.MessagingStub:
    return messaging_pb2_grpc.MessagingStub(m.channel("messaging"))


async def used_by(m: Mesh) -> dict[str, list[str]] | None:
    """template key → the journeys whose published version sends it; None when journeys is unavailable."""
    try:
        reply = await journeys_pb2_grpc.JourneysStub(m.channel("journeys")).ListJourneys(
            journeys_pb2.ListJourneysRequest(), timeout=m.timeout)
    except grpc.aio.AioRpcError as exc:
        log.warning("journeys did not answer for templates' users: %s", exc.code().name)
        return None
    out: dict[str, list[str]] = {}
    for journey in reply.journeys:
        for key in journey.templates:
            out.setdefault(key, []).append(journey.key)
    return out


class TemplateSummary(TypedDict):
    key: str
    journey: str
    category: str
    subject: str
    published_version: int | None   # null: never published
    latest_version: int
    updated_at: str | None
    used_by: list[str] | None   # the journeys whose published version sends it; null when journeys is down


class TemplateList(TypedDict):
    items: list[TemplateSummary]


class TemplateVersion(TypedDict):
    version: int
    status: str
    source: str
    created_at: str | None
    published_at: str | None


class Variable(TypedDict):
    name: str
    description: str


class Template(TemplateSummary):
    """A version's content; `subject` is the version's (the summary's is the published one's)."""

    version: int
    status: str
    preheader: str
    body: str   # MJML
    text: str
    variants: JsonObject   # variant name → its overrides, as the draft gave them
    topic: str    # what the version's sends are about (its own, else the template's default)
    format: str   # what kind of piece it is (its own, else the template's default)
    cta_label: str   # the button's label; "": the template's own (its catalog entry's, else "Learn more")
    cta_path: str    # the button's page (a path, or an https address on the site); "": the template's own
    versions: list[TemplateVersion]
    variables: list[Variable]


class TemplatePublished(TypedDict):
    key: str
    version: int
    previous_version: int | None   # null: none was live


class Preview(TypedDict):
    subject: str
    preheader: str
    html: str
    text: str
    variant: str
    version: int
    width: str   # desktop | phone
    viewport_px: int


class TestSent(TypedDict):
    to: str
    version: int
    subject: str
    test: bool


def _summary(s: messaging_pb2.TemplateSummary, users: dict[str, list[str]] | None) -> TemplateSummary:
    return {"key": s.key, "journey": s.journey, "category": s.category, "subject": s.subject,
            "published_version": s.published_version or None, "latest_version": s.latest_version,
            "updated_at": iso(s.updated_at, s.HasField("updated_at")),
            "used_by": sorted(users.get(s.key, [])) if users is not None else None}


async def list_templates(m: Mesh) -> list[TemplateSummary]:
    reply = await _stub(m).ListTemplates(messaging_pb2.ListTemplatesRequest(), timeout=m.timeout)
    users = await used_by(m)
    return [_summary(s, users) for s in reply.items]


async def get_template(m: Mesh, key: str, version: int = 0) -> Template:
    r = await _stub(m).GetTemplate(messaging_pb2.GetTemplateRequest(key=key, version=version), timeout=m.timeout)
    users = await used_by(m)
    return {**_summary(r.summary, users), "version": r.version, "status": r.status,
            "subject": r.content.subject, "preheader": r.content.preheader, "body": r.content.body,
            "text": r.content.text, "variants": json.loads(r.content.variants_json or "{}"),
            "topic": r.content.topic, "format": r.content.format,
            "cta_label": r.content.cta_label, "cta_path": r.content.cta_path,
            "versions": [{"version": v.version, "status": v.status, "source": v.source,
                          "created_at": iso(v.created_at, v.HasField("created_at")),
                          "published_at": iso(v.published_at, v.HasField("published_at"))} for v in r.versions],
            "variables": [{"name": v.name, "description": v.description} for v in r.variables]}


def _version(value: JsonValue, name: str = "version") -> int:
    problem = limits.check_int(value, name, low=0)
    if problem:
        raise ApiError(422, "invalid", f"{name} must be an integer from 0 to {limits.INT32_MAX}", {"fields": problem})
    return int(value)


def content_message(body: JsonObject) -> messaging_pb2.TemplateContent:
    """A draft's fields as the RPC takes them; 422 for a field of the wrong type (the service checks the rest)."""
    unknown = sorted(set(body) - set(CONTENT_FIELDS))
    wrong = {f: "must be text" for f in TEXT_FIELDS if f in body and not isinstance(body[f], str)}
    if "variants" in body and not isinstance(body["variants"], dict):
        wrong["variants"] = "must be an object of variants"
    wrong.update({f: "is not a field of a template" for f in unknown})
    if wrong:
        raise ApiError(422, "invalid", "; ".join(f"{k} {v}" for k, v in wrong.items()),
                       {"fields": wrong, "problems": [f"{k}: {v}" for k, v in wrong.items()]})
    return messaging_pb2.TemplateContent(
        subject=body.get("subject", ""), preheader=body.get("preheader", ""), body=body.get("body", ""),
        text=body.get("text", ""), variants_json=json.dumps(body.get("variants") or {}),
        topic=body.get("topic", ""), format=body.get("format", ""), cta_label=body.get("cta_label", ""),
        cta_path=body.get("cta_path", ""))


async def put_draft(m: Mesh, key: str, body: JsonObject, validate_only: bool = False) -> int:
    reply = await _stub(m).PutTemplate(messaging_pb2.PutTemplateRequest(
        key=key, content=content_message(body), validate_only=validate_only), timeout=m.timeout)
    return int(reply.version)


async def preview(m: Mesh, key: str, version: int, lead_id: str, variant: str = "",
                  unsaved: JsonObject | None = None) -> messaging_pb2.PreviewTemplateReply:
    """`unsaved`: render these fields (a draft being edited) instead of a stored version."""
    request = messaging_pb2.PreviewTemplateRequest(key=key, version=version, lead_id=lead_id, variant=variant)
    if unsaved is not None:
        request.content.CopyFrom(content_message(unsaved))
    reply: messaging_pb2.PreviewTemplateReply = await _stub(m).PreviewTemplate(request, timeout=m.timeout)
    return reply


@router.get("/templates", summary="Every template with its versions and the journeys that use it")
async def templates(m: Mesh = Depends(mesh)) -> TemplateList:
    return {"items": await list_templates(m)}


@router.get("/templates/{key}", summary="A template's content (the published version unless one is named) and versions")
async def template(key: str, version: int = Query(0, ge=0, le=limits.INT32_MAX),
                   m: Mesh = Depends(mesh)) -> Template:
    return await get_template(m, key, version)


@router.put("/templates/{key}", summary="Store a new draft version (422 lists every problem)",
            responses={200: {"model": Validated}, 201: {"model": DraftStored}})
async def put_template(key: str, response: Response, validate_only: bool = Query(False),
                       body: JsonValue = Depends(json_body), m: Mesh = Depends(mesh)) -> Validated | DraftStored:
    version = await put_draft(m, key, require_object(body, "template"), validate_only)
    if validate_only:
        return {"key": key, "valid": True, "problems": []}
    response.status_code = 201
    response.headers["Location"] = f"/v1/templates/{key}?version={version}"
    return {"key": key, "version": version, "status": "draft"}


@router.post("/templates/{key}/publish", summary="Make a version live for the next send")
async def publish(key: str, body: JsonValue = Depends(json_body), m: Mesh = Depends(mesh)) -> TemplatePublished:
    body = require_object(body)
    version = _version(body.get("version"))
    if version < 1:
        raise ApiError(422, "invalid", "version is required", {"fields": {"version": "is required"}})
    r = await _stub(m).PublishTemplate(messaging_pb2.PublishTemplateRequest(key=key, version=version),
                                       timeout=m.timeout)
    return {"key": r.key, "version": r.version, "previous_version": r.previous_version or None}


@router.get("/templates/{key}/preview", summary="A version rendered for a lead (links untracked; nothing recorded)")
async def preview_template(key: str, lead_id: str = Query("", max_length=128),
                           version: int = Query(0, ge=0, le=limits.INT32_MAX),
                           width: str = Query("desktop", pattern="^(desktop|phone)$"),
                           variant: str = Query("", max_length=16),
                           m: Mesh = Depends(mesh)) -> Preview:
    r = await preview(m, key, version, lead_id, variant)
    return {"subject": r.subject, "preheader": r.preheader, "html": r.html, "text": r.text, "variant": r.variant,
            "version": r.version, "width": width, "viewport_px": WIDTHS[width]}


@router.post("/templates/{key}/test-send", summary="Send one copy, marked as a test, to an address")
async def test_send(key: str, body: JsonValue = Depends(json_body), m: Mesh = Depends(mesh)) -> TestSent:
    body = require_object(body)
    to, lead_id = body.get("to"), body.get("lead_id", "")
    fields = {}
    if not isinstance(to, str) or not to:
        fields["to"] = "is required (an email address)"
    if not isinstance(lead_id, str):
        fields["lead_id"] = "must be text"
    if fields:
        raise ApiError(422, "invalid", "; ".join(f"{k} {v}" for k, v in fields.items()), {"fields": fields})
    version = _version(body.get("version", 0))
    r = await _stub(m).TestSendTemplate(messaging_pb2.TestSendRequest(
        key=key, version=version, lead_id=str(lead_id), to=str(to)), timeout=m.timeout)
    return {"to": r.to, "version": r.version, "subject": r.subject, "test": True}
