"""The console's templates: the list, a template's page (versions and history, the journeys that use it,
previews at desktop and phone widths for a chosen lead, A/B variants with their report, a test send),
and the editor (subject, preheader, MJML body, plain text, topic and format, variants; personalization
fields and dynamic blocks insertable from the variables that exist; problems as you type; a live preview
of the unsaved text; save as a draft; publish).

Previews are served from their own route (`preview.html`) into sandboxed iframes: the email's HTML is
the one document of the console with inline styles (mail needs them), so that route has its own strict
CSP (no script at all, styles inline only, images from https and data:, framed by the console only).
"""

from __future__ import annotations

import json

import grpc
from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from gateway import roles
from gateway.console.editing import problems_of
from gateway.console.guard import guarded, mesh_of
from gateway.console.render import page, protect
from gateway.console.session import Session
from gateway.deps import ApiError
from gateway.routes import messaging as messaging_api
from gateway.routes import template_segments as segments_api
from gateway.routes import templates as templates_api
from gateway.shapes import TypedDict
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.jsontypes import JsonObject

router = APIRouter(prefix="/console", include_in_schema=False)

PREVIEW_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; font-src https: data:; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox")
FIELDS = ("subject", "preheader", "body", "text", "topic", "format", "cta_label", "cta_path")
# Dynamic blocks the editor inserts: content shown only to some leads (segment, stage, country).
BLOCKS = {
    "segment": "{% if segment == 'family' %}\n  ...\n{% endif %}",
    "stage": "{% if stage in ('mql', 'sql') %}\n  ...\n{% endif %}",
    "country": "{% if 'Canada' in countries %}\n  ...\n{% endif %}",
    "section by segment": ("<mj-raw>{% if segment == 'entrepreneur' %}</mj-raw>\n<mj-section><mj-column>\n"
                           "  <mj-text>...</mj-text>\n</mj-column></mj-section>\n<mj-raw>{% endif %}</mj-raw>"),
    "tracked link": "<a href=\"{{ track('https://www.borderbridge.example/') }}\">...</a>",
}


def _version(raw: str | None) -> int:
    try:
        value = int(raw or 0)
    except ValueError as exc:
        raise ApiError(422, "invalid", "version must be a number") from exc
    if not 0 <= value < 2**31:
        raise ApiError(422, "invalid", "version must be a number")
    return value


def _fields_of(form: dict[str, str]) -> tuple[JsonObject, list[str]]:
    """The editor's fields as a template's content; variants are a JSON object in their own box."""
    body: JsonObject = {f: form.get(f, "").replace("\r\n", "\n") for f in FIELDS}
    text = form.get("variants", "").strip() or "{}"
    try:
        variants = json.loads(text)
    except ValueError as exc:
        return body, [f"variants: not JSON: {exc}"]
    if not isinstance(variants, dict):
        return body, ["variants: must be a JSON object {\"name\": {\"subject\": ..., \"weight\": ...}}"]
    body["variants"] = variants
    return body, []


async def _check(request: Request, key: str, form: dict[str, str], *, save: bool) -> tuple[list[str], int]:
    content, problems = _fields_of(form)
    if problems:
        return problems, 0
    try:
        version = await templates_api.put_draft(mesh_of(request), key, content, validate_only=not save)
    except grpc.aio.AioRpcError as exc:
        return problems_of(exc), 0
    except ApiError as exc:
        return [str(p) for p in (exc.details or {}).get("problems", [exc.message])], 0
    return [], version


class AbSummary(TypedDict):
    """The A/B report the editor shows beside a template's variants."""

    metric: str
    winner: str
    significant: bool
    p_value: float
    explanation: str
    variants: list[messaging_api.AbVariant]


async def _ab_report(request: Request, key: str) -> AbSummary | None:
    m = mesh_of(request)
    try:
        r = await messaging_pb2_grpc.MessagingStub(m.channel("messaging")).AbReport(
            messaging_pb2.AbReportRequest(template=key), timeout=m.timeout)
    except grpc.aio.AioRpcError:
        return None
    return {"metric": r.metric, "winner": r.winner, "significant": r.significant, "p_value": r.p_value,
            "explanation": r.explanation,
            "variants": [{"name": v.name, "sent": v.sent, "opened": v.opened, "clicked": v.clicked,
                          "open_rate": v.open_rate, "click_rate": v.click_rate} for v in r.variants]}


@router.get("/templates")
async def templates(request: Request) -> Response:
    async def handler(_request: Request, current: Session) -> Response:
        items = await templates_api.list_templates(mesh_of(request))
        segments = await segments_api.list_segments(mesh_of(request))
        return page("templates.html", session=current, title="Templates", templates=items, segments=segments)
    return await guarded(request, handler)


async def _template_page(request: Request, current: Session, key: str, version: int, *, lead_id: str = "",
                         notice: str = "", problems: list[str] | None = None, status: int = 200) -> Response:
    detail = await templates_api.get_template(mesh_of(request), key, version)
    return page("template.html", status=status, session=current, title=key, t=detail, lead_id=lead_id,
                ab=await _ab_report(request, key), notice=notice, problems=problems or [],
                can_edit=roles.allows(current.role, "editor"))


@router.get("/templates/{key}")
async def template(request: Request, key: str) -> Response:
    async def handler(_request: Request, current: Session) -> Response:
        lead_id = request.query_params.get("lead_id", "")[:128]
        return await _template_page(request, current, key, _version(request.query_params.get("version")),
                                    lead_id=lead_id)
    return await guarded(request, handler)


def _email_document(html: str) -> Response:
    response = HTMLResponse(html)
    protect(response)
    response.headers["Content-Security-Policy"] = PREVIEW_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@router.get("/templates/{key}/preview.html")
async def preview_document(request: Request, key: str) -> Response:
    """A stored version's HTML for a lead, as the iframe on the template page shows it."""
    async def handler(_request: Request, _current: Session) -> Response:
        q = request.query_params
        r = await templates_api.preview(mesh_of(request), key, _version(q.get("version")), q.get("lead_id", "")[:128],
                                        q.get("variant", "")[:16])
        return _email_document(r.html)
    return await guarded(request, handler)


@router.post("/templates/{key}/preview.html")
async def preview_unsaved(request: Request, key: str) -> Response:
    """The editor's unsaved text rendered (its live preview): the problems instead when it has any."""
    async def handler(_request: Request, _current: Session) -> Response:
        form = request.state.form
        content, problems = _fields_of(form)
        if not problems:
            try:
                r = await templates_api.preview(mesh_of(request), key, 0, form.get("lead_id", "")[:128],
                                                unsaved=content)
                return _email_document(r.html)
            except grpc.aio.AioRpcError as exc:
                problems = problems_of(exc)
            except ApiError as exc:
                problems = [exc.message]
        listed = "".join(f"<li>{_escape(p)}</li>" for p in problems)
        return _email_document(f"<!doctype html><p>The preview shows once these are fixed:</p><ul>{listed}</ul>")
    return await guarded(request, handler, needed="editor", form=True)


def _escape(text: str) -> str:
    from html import escape
    return escape(text)


def _form(t: templates_api.Template) -> dict[str, str]:
    """A version's text fields as the editor's form holds them (its topic and format too: a draft saved
    here keeps what the version it starts from is about)."""
    return {"subject": t["subject"], "preheader": t["preheader"], "body": t["body"], "text": t["text"],
            "topic": t["topic"], "format": t["format"], "cta_label": t["cta_label"], "cta_path": t["cta_path"]}


async def _editor(request: Request, current: Session, key: str, form: dict[str, str] | None,
                  problems: list[str], saved: int) -> Response:
    m = mesh_of(request)
    try:
        detail: templates_api.Template | None = await templates_api.get_template(m, key, 0)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        detail = None   # a new template: the editor starts empty
    if form is None:
        latest = (await templates_api.get_template(m, key, detail["latest_version"])) if detail else None
        form = _form(latest) if latest else dict.fromkeys(FIELDS, "")
        form["variants"] = json.dumps((latest["variants"] if latest else None) or {}, indent=2)
    variables = detail["variables"] if detail else []
    return page("edit_template.html", status=422 if problems else 200, session=current, title=f"Edit {key}",
                key=key, t=detail, form=form, problems=problems, saved=saved, variables=variables,
                blocks=BLOCKS, ab=await _ab_report(request, key) if detail else None)


@router.get("/templates/{key}/edit")
async def edit(request: Request, key: str) -> Response:
    async def handler(_request: Request, current: Session) -> Response:
        return await _editor(request, current, key, None, [], 0)
    return await guarded(request, handler, needed="editor")


# GrapesJS sets style attributes and adds <style> elements as it draws: this page alone allows inline
# styles (never inline script); docs/SECURITY.md says so.
BLOCKS_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
              "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
              "frame-ancestors 'none'; form-action 'self'")


@router.get("/templates/{key}/blocks")
async def blocks(request: Request, key: str) -> Response:
    """The block editor (GrapesJS with grapesjs-mjml) over the body of the latest version."""
    async def handler(_request: Request, current: Session) -> Response:
        m = mesh_of(request)
        newest = (await templates_api.get_template(m, key, 0))["latest_version"]
        latest = await templates_api.get_template(m, key, newest)
        form = _form(latest)
        form["variants"] = json.dumps(latest["variants"] or {})
        response = page("blocks_template.html", session=current, title=f"Blocks of {key}", key=key,
                        version=latest["version"], form=form)
        response.headers["Content-Security-Policy"] = BLOCKS_CSP
        return response
    return await guarded(request, handler, needed="editor")


@router.post("/templates/{key}/edit")
async def save(request: Request, key: str) -> Response:
    async def handler(_request: Request, current: Session) -> Response:
        form = request.state.form
        problems, version = await _check(request, key, form, save=form.get("action") == "save")
        return await _editor(request, current, key, form, problems, version)
    return await guarded(request, handler, needed="editor", form=True)


@router.post("/templates/{key}/validate")
async def validate(request: Request, key: str) -> Response:
    """As the editor types (templates.js): every problem of the text, nothing stored."""
    async def handler(_request: Request, _current: Session) -> Response:
        problems, _ = await _check(request, key, request.state.form, save=False)
        return protect(JSONResponse({"valid": not problems, "problems": problems}))
    return await guarded(request, handler, needed="editor", form=True)


@router.post("/templates/{key}/publish")
async def publish(request: Request, key: str) -> Response:
    async def handler(_request: Request, current: Session) -> Response:
        version = _version(request.state.form.get("version"))
        if version < 1:
            raise ApiError(422, "invalid", "choose a version to publish")
        m = mesh_of(request)
        try:
            await messaging_pb2_grpc.MessagingStub(m.channel("messaging")).PublishTemplate(
                messaging_pb2.PublishTemplateRequest(key=key, version=version), timeout=m.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            return await _template_page(request, current, key, version, problems=problems_of(exc), status=422)
        return await _template_page(request, current, key, 0,
                                    notice=f"Version {version} is published: the next send uses it.")
    return await guarded(request, handler, needed="editor", form=True)


@router.post("/templates/{key}/test-send")
async def test_send(request: Request, key: str) -> Response:
    async def handler(_request: Request, current: Session) -> Response:
        form = request.state.form
        version = _version(form.get("version"))
        m = mesh_of(request)
        try:
            r = await messaging_pb2_grpc.MessagingStub(m.channel("messaging")).TestSendTemplate(
                messaging_pb2.TestSendRequest(key=key, version=version, lead_id=form.get("lead_id", "")[:128],
                                              to=form.get("to", "")[:320]), timeout=m.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
                raise
            return await _template_page(request, current, key, version, problems=problems_of(exc)
                                        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else [exc.details() or ""],
                                        status=422)
        return await _template_page(request, current, key, version,
                                    notice=f"A test copy of version {r.version} went to {r.to}.")
    return await guarded(request, handler, needed="editor", form=True)
