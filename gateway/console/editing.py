"""Editing in the console: a journey's draft and the scoring model as their YAML documents, validated by
the services (every problem listed, as the API's 422 lists them), diffed against the published version,
stored as drafts, and published (with a dry run first: which live leads would move, which leads would
change grade or stage). Editors and admins only; a viewer gets 403."""

from __future__ import annotations

import difflib
import json

import grpc
import yaml
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from gateway import roles
from gateway.console import graph
from gateway.console.guard import guarded, mesh_of
from gateway.console.render import page, protect
from gateway.console.session import Session
from gateway.deps import ApiError
from gateway.routes import journeys as journeys_api
from gateway.routes import scoring as scoring_api
from nurture import limits
from nurture.api.journeys.v1 import journeys_pb2
from nurture.api.scoring.v1 import scoring_pb2
from nurture.jsontypes import JsonObject, JsonValue
from nurture.rpc import LONG_DEADLINE_S

router = APIRouter(prefix="/console", include_in_schema=False)


def as_yaml(document: JsonValue) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=110)


def parse_document(text: str) -> tuple[JsonObject | None, list[str]]:
    """The edited YAML (or JSON) as a document, or the problems that keep it from being one."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [f"not valid YAML: {limits.shown(str(exc))}"]
    except RecursionError:
        return None, [f"nests deeper than {limits.MAX_DEPTH} levels"]
    if not isinstance(document, dict):
        return None, ["the document must be a mapping (key: value lines)"]
    problems = limits.problems_in(document)
    if problems:
        return None, [f"{where}: {why}" for where, why in problems.items()]
    return document, []


def problems_of(exc: grpc.aio.AioRpcError) -> list[str]:
    """Every problem a service listed in its refusal (the API's 422 details.problems)."""
    if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
        raise exc
    try:
        parsed = json.loads(exc.details() or "")
    except ValueError:
        return [exc.details() or "invalid"]
    listed = (parsed.get("details") or {}).get("problems") if isinstance(parsed, dict) else None
    if isinstance(listed, list) and listed:
        return [str(p) for p in listed]
    return [str(parsed.get("message", exc.details())) if isinstance(parsed, dict) else str(parsed)]


def diff(published: JsonValue, draft_text: str) -> str:
    """What the draft changes, line by line: both sides dumped the same way (keys sorted), so only changes
    of content show, not of formatting or key order. A draft that does not parse is shown whole."""
    document, _ = parse_document(draft_text)
    ours = yaml.safe_dump(published, sort_keys=True, allow_unicode=True, width=110)
    theirs = yaml.safe_dump(document, sort_keys=True, allow_unicode=True, width=110) if document else draft_text
    return _unified(ours, theirs)


def _unified(published: str, draft: str) -> str:
    return "".join(difflib.unified_diff(published.splitlines(keepends=True), draft.splitlines(keepends=True),
                                        fromfile="published", tofile="draft", n=2))


async def _check_journey(request: Request, key: str, text: str, *, save: bool) -> tuple[list[str], int]:
    document, problems = parse_document(text)
    if document is None:
        return problems, 0
    try:
        reply = await journeys_api._stub(mesh_of(request)).PutJourney(journeys_pb2.PutJourneyRequest(
            key=key, definition_json=json.dumps(document, default=str), validate_only=not save),
            timeout=mesh_of(request).timeout)
    except grpc.aio.AioRpcError as exc:
        return problems_of(exc), 0
    return [], reply.version


def draft_graph(text: str) -> graph.Layout | None:
    """The draft drawn as the journey page draws a journey (no counts: nothing ran it), or None when
    the text is not a document."""
    document, _ = parse_document(text)
    if document is None:
        return None
    return graph.layout(*graph.build(document, {}))


async def _journey_editor(request: Request, current: Session, key: str, text: str | None,
                          problems: list[str], saved: int) -> Response:
    m = mesh_of(request)
    published = await journeys_api.get_journey(key, 0, m)
    latest = max((v["version"] for v in published["versions"]), default=published["version"])
    if text is None:
        text = as_yaml((await journeys_api.get_journey(key, latest, m))["definition"])
    drawn = draft_graph(text)
    return page("edit_journey.html", status=422 if problems else 200, session=current, title=f"Edit {key}",
                key=key, text=text, problems=problems, saved=saved, published=published,
                diff=diff(published["definition"], text), graph=drawn, graph_json=json.dumps(drawn),
                versions=[v["version"] for v in published["versions"]], simulate_version=saved or latest)


@router.get("/journeys/{key}/edit")
async def edit_journey(request: Request, key: str) -> Response:
    async def handler(_request: Request, current: Session) -> Response:
        return await _journey_editor(request, current, key, None, [], 0)
    return await guarded(request, handler, needed="editor")


@router.post("/journeys/{key}/edit")
async def save_journey(request: Request, key: str) -> Response:
    async def handler(_request: Request, current: Session) -> Response:
        fields = request.state.form
        text = fields.get("document", "")
        problems, version = await _check_journey(request, key, text, save=fields.get("action") == "save")
        return await _journey_editor(request, current, key, text, problems, version)
    return await guarded(request, handler, needed="editor", form=True)


@router.post("/journeys/{key}/validate")
async def validate_journey(request: Request, key: str) -> Response:
    """As the editor types (console.js): every problem of the document, nothing stored."""
    async def handler(_request: Request, _current: Session) -> Response:
        text = request.state.form.get("document", "")
        problems, _ = await _check_journey(request, key, text, save=False)
        # The graph only of a valid draft: the page keeps the last valid one drawn (marked stale) meanwhile.
        return protect(JSONResponse({"valid": not problems, "problems": problems,
                                     "graph": None if problems else draft_graph(text)}))
    return await guarded(request, handler, needed="editor", form=True)


# -- the scoring model ---------------------------------------------------------------------------------


async def _scoring_page(request: Request, current: Session, text: str | None, problems: list[str],
                        saved: int, can_edit: bool) -> Response:
    model = await scoring_api.get_model(mesh_of(request))
    return page("scoring.html", status=422 if problems else 200, session=current, title="Scoring model",
                model=model, text=as_yaml(model["definition"]) if text is None else text, problems=problems,
                saved=saved, diff=diff(model["definition"], text) if text is not None else "", can_edit=can_edit)


@router.get("/scoring")
async def scoring(request: Request) -> Response:
    async def handler(_request: Request, current: Session) -> Response:
        return await _scoring_page(request, current, None, [], 0, roles.allows(current.role, "editor"))
    return await guarded(request, handler)


@router.post("/scoring")
async def save_scoring(request: Request) -> Response:
    async def handler(_request: Request, current: Session) -> Response:
        text = request.state.form.get("document", "")
        version, problems = await _check_scoring(request, text, save=True)
        return await _scoring_page(request, current, text, problems, version, True)
    return await guarded(request, handler, needed="editor", form=True)


async def _check_scoring(request: Request, text: str, *, save: bool) -> tuple[int, list[str]]:
    """The scoring service's checks of a draft's text (every problem); stored as the next draft if `save`."""
    document, problems = parse_document(text)
    if document is None:
        return 0, problems
    return await scoring_api.put_draft(mesh_of(request), document, validate_only=not save)


@router.post("/scoring/validate")
async def validate_scoring(request: Request) -> Response:
    """As the editor types (console.js): every problem of the draft, nothing stored."""
    async def handler(_request: Request, _current: Session) -> Response:
        _, problems = await _check_scoring(request, request.state.form.get("document", ""), save=False)
        return protect(JSONResponse({"valid": not problems, "problems": problems, "graph": None}))
    return await guarded(request, handler, needed="editor", form=True)


@router.post("/scoring/publish")
async def publish_scoring(request: Request) -> Response:
    async def handler(_request: Request, current: Session) -> Response:
        fields = request.state.form
        try:
            version = int(fields.get("version", ""))
        except ValueError as exc:
            raise ApiError(422, "invalid", "choose a version to publish") from exc
        if not 0 < version < 2**31:
            raise ApiError(422, "invalid", "choose a version to publish")
        dry_run = fields.get("dry_run") == "on"
        reply = await scoring_api._stub(mesh_of(request)).PublishScoringModel(
            scoring_pb2.PublishScoringModelRequest(version=version, dry_run=dry_run), timeout=LONG_DEADLINE_S)
        report = {"version": reply.version, "dry_run": reply.dry_run, "leads": reply.leads,
                  "grade_changes": reply.grade_changes, "stage_changes": reply.stage_changes,
                  "changes": json.loads(reply.changes_json or "[]")}
        # Figures and a table a marketer reads, not the reply's JSON; a dry run offers the real publish.
        return page("scoring_published.html", session=current, title="Scoring model", report=report)
    return await guarded(request, handler, needed="editor", form=True)
