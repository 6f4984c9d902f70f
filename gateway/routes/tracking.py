"""Website tracking (docs/API.md "Website tracking"): the snippet `GET /t/nurture.js` and the `/t/v1/...`
endpoints it calls with a publishable site key (`?k=<site key>` on every call, so that a CORS
preflight, which carries no body, can be checked too).

Every call must come from one of the key's origins (`Origin`); its answers, errors included, carry
CORS headers for that origin only. Bots and prefetchers are not collected; Do-Not-Track and Global
Privacy Control are honoured as the key says; rate limits per key and per visitor live in Redis.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from functools import cache, lru_cache
from pathlib import Path
from typing import NotRequired, TypeVar
from urllib.parse import parse_qsl

import grpc
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from gateway.deps import ApiError, disconnected, json_body, parse_body
from gateway.shapes import TypedDict
from gateway.tracking import linktoken
from gateway.tracking.keys import SiteKey
from gateway.tracking.policy import CollectedEvent, check_event, collect_policy, not_a_visitor, privacy_refusal
from gateway.tracking.ratelimit import Refusal
from gateway.tracking.state import Tracking
from nurture import jsoncodec
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.errors import HttpError, http_error_from_rpc
from nurture.jsontypes import JsonObject, JsonValue
from nurture.redisconn import NotReplicated
from nurture.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/t", tags=["website tracking"])

SNIPPET = Path(__file__).resolve().parents[1] / "tracking" / "nurture.js"
VISITOR_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
NO_STORE = {"Cache-Control": "no-store"}
T = TypeVar("T")


# The bodies these routes answer (each in a JSONResponse of its own, for its CORS headers): named in
# the routes' `responses`, so the OpenAPI document shows them as it shows the others' (gateway.shapes).
class RejectedEvent(TypedDict):
    index: int
    error: str   # why this event was refused


class Collected(TypedDict):
    accepted: int
    duplicates: int
    rejected: list[RejectedEvent]
    ignored: NotRequired[str]   # bot, prefetch, do_not_track, global_privacy_control: nothing was collected


class Identified(TypedDict):
    identified: bool
    merged: int   # anonymous events merged now
    ignored: NotRequired[str]


class VisitorPersonalization(TypedDict):
    known: bool
    segment: str | None
    featured_countries: list[str]
    recommended_content: JsonValue   # messaging's list of {key, title, url, reason}
    next_best_action: JsonValue      # messaging's {action, label, url, reason}


class FormField(TypedDict):
    key: str
    label: str
    kind: str   # email | text | choice | multi_choice | number | boolean
    choices: list[str]


class FormFields(TypedDict):
    fields: list[FormField]


class FormStored(TypedDict):
    stored: int
    identified: bool
    merged: int
    ignored: NotRequired[str]


def tracking(request: Request) -> Tracking:
    state = request.app.state
    found: Tracking | None = getattr(state, "tracking", None)
    if found is None:  # an app built without create_app's wiring (some tests): made on first use
        found = state.tracking = Tracking.create(state.mesh.settings, state.mesh)
    return found


@cache
def snippet_source() -> bytes:
    return SNIPPET.read_bytes()


@router.get("/nurture.js", summary="The website tracking snippet (JavaScript, no key needed to fetch it)")
async def snippet() -> Response:
    return Response(snippet_source(), media_type="text/javascript; charset=utf-8",
                    headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff",
                             "Cross-Origin-Resource-Policy": "cross-origin"})


# -- the site key, the origin and the answer's CORS headers -------------------------------------------

def _cors(origin: str) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin", **NO_STORE}


def _same_origin(key: SiteKey, headers: Mapping[str, str]) -> str | None:
    """A browser sends no `Origin` on a same-origin GET (the Fetch standard), so a page served from the
    gateway's own address (the origin `nurture up`'s development key allows) reading its visitor's form
    fields or personalization was refused. Such a request says `Sec-Fetch-Site: same-origin`: its origin is
    the gateway's own, `Host` under the scheme the key names (a client that forges this could forge
    `Origin` as well; the site key is public by design)."""
    host = headers.get("host")
    if headers.get("sec-fetch-site") != "same-origin" or not host:
        return None
    return next((o for o in (f"https://{host}", f"http://{host}") if key.allows(o)), None)


def _site(request: Request, k: str) -> tuple[SiteKey, dict[str, str]]:
    return _site_of(tracking(request), k, request.headers)


def _site_of(state: Tracking, k: str, headers: Mapping[str, str]) -> tuple[SiteKey, dict[str, str]]:
    key = state.keys.get(k)
    if key is None:
        raise ApiError(403, "unknown_site_key", "this site key is not configured (NURTURE_SITE_KEYS)")
    origin = headers.get("origin") or _same_origin(key, headers)
    if not key.allows(origin):
        raise ApiError(403, "origin_not_allowed", "this site key may not be used from this origin",
                       {"origin": (origin or "")[:200]})
    assert origin is not None
    return key, _cors(origin)


def _rpc_error(exc: grpc.aio.AioRpcError, cors: dict[str, str]) -> ApiError:
    """A gRPC error as the API's, with the CORS headers (so the page can read why)."""
    error = http_error_from_rpc(exc)
    return ApiError(error.status, error.code, error.message, error.details, {**(error.headers or {}), **cors})


async def _call(call: Awaitable[T], cors: dict[str, str]) -> T:
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise _rpc_error(exc, cors) from exc


def _visitor(value: JsonValue, cors: dict[str, str]) -> str:
    if not isinstance(value, str) or not 16 <= len(value) <= 64 or not set(value) <= VISITOR_CHARS:
        raise ApiError(422, "invalid", "visitor_id must be 16-64 letters, digits, _ or -",
                       {"fields": {"visitor_id": "must be 16-64 letters, digits, _ or -"}}, cors)
    return value


async def _body(request: Request, cors: dict[str, str], allowed: set[str]) -> JsonObject:
    try:
        body = await json_body(request)
    except ApiError as exc:
        raise _with_cors(exc, cors) from exc
    return _fields(body, cors, allowed)


def _with_cors(exc: ApiError, cors: dict[str, str]) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message, exc.details, {**exc.headers, **cors})


def _fields(body: JsonValue, cors: dict[str, str], allowed: set[str]) -> JsonObject:
    """The body as an object holding only `allowed` fields, else 422."""
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object",
                       {"fields": {"body": "must be an object"}}, cors)
    unknown = sorted(str(k)[:64] for k in body if k not in allowed)
    if unknown:
        raise ApiError(422, "invalid", f"unknown field(s): {', '.join(unknown)}",
                       {"fields": {k: "is not a field of this request" for k in unknown}}, cors)
    return body


async def _limit(request: Request, key: SiteKey, visitor_id: str | None, cors: dict[str, str], events: int = 1) -> None:
    try:
        refused = await tracking(request).limits.take(key, visitor_id, events)
    except RedisError as exc:
        raise _limits_down(exc, cors) from exc
    if refused is not None:
        raise _refusal(refused, cors)


def _limits_down(exc: Exception, cors: dict[str, str]) -> ApiError:
    log.warning("tracking rate limits unavailable: %s", type(exc).__name__)
    return ApiError(503, "unavailable", "a service behind the gateway is unavailable: retry later",
                    headers={"Retry-After": "2", **cors})


def _refusal(refused: Refusal, cors: dict[str, str]) -> ApiError:
    if refused.scope == "backlog":
        log.warning("tracking: the collect stream holds %d entries (scoring away?): refusing", refused.limit)
        return ApiError(503, "unavailable", "events are not being stored right now: retry later",
                        headers={"Retry-After": str(refused.retry_after_s), **cors})
    per = "second for this site key" if refused.scope == "key" else "minute for this visitor"
    return ApiError(429, "rate_limited", f"more than {refused.limit} per {per}; retry later",
                    {"scope": refused.scope, "limit": refused.limit},
                    {"Retry-After": str(refused.retry_after_s), **cors})


def _scoring(request: Request) -> scoring_pb2_grpc.ScoringStub:
    return scoring_pb2_grpc.ScoringStub(request.app.state.mesh.channel("scoring"))


def _timeout(request: Request) -> float:
    value: float = request.app.state.mesh.timeout
    return value


# -- the endpoints ------------------------------------------------------------------------------------

@router.options("/v1/{path:path}", include_in_schema=False)
async def preflight(request: Request, path: str, k: str = "") -> Response:
    """CORS preflight: allowed for the key's origins, for GET and POST with a Content-Type."""
    _, cors = _site(request, k)
    method = request.headers.get("access-control-request-method", "")
    if method not in ("GET", "POST"):
        raise ApiError(403, "method_not_allowed", "only GET and POST are served here", headers=cors)
    return Response(status_code=204, headers={**cors, "Access-Control-Allow-Methods": "GET, POST",
                                              "Access-Control-Allow-Headers": "Content-Type",
                                              "Access-Control-Max-Age": "600"})


@router.post("/v1/collect", status_code=202, summary="Events of a visitor (the allowed set only)",
             responses={202: {"model": Collected}})
async def collect(request: Request, k: str = Query(..., max_length=128)) -> Response:
    # Served by `collect_asgi` in a running gateway (gateway.app); this route gives the OpenAPI document
    # its operation and answers an app called without that middleware, with the same handler.
    try:
        raw = await request.body()
    except ClientDisconnect as exc:
        raise disconnected() from exc
    status, body, headers = await answer_collect(tracking(request), _headers(request.scope), raw, k)
    return Response(body, status, {name.decode("latin-1"): value.decode("latin-1") for name, value in headers},
                    media_type="application/json")


async def collect_asgi(scope: Scope, receive: Receive, send: Send, state: Tracking) -> None:
    """`POST /t/v1/collect` answered at the ASGI layer (gateway.app), the snippet's hottest call: no
    FastAPI routing or dependency solving, no Starlette request or response objects (the body read
    from `receive` directly: Starlette's stream is an async generator, whose registration with the
    loop alone cost ~3% of the gateway's CPU per event), the answer sent as two ASGI messages. Same
    handler and errors as the route."""
    headers: list[tuple[bytes, bytes]]
    try:
        k = _query_value(scope.get("query_string", b""), "k")
        if not k or len(k) > 128:
            raise ApiError(422, "invalid", "k (the site key) is required", {"fields": {"k": "is required"}})
        status, body, headers = await answer_collect(state, _headers(scope), await _read(receive), k)
    except ApiError as exc:
        error = HttpError.of(exc)
        status, body = exc.status, jsoncodec.dumps(error.body()).encode()
        headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in exc.headers.items()]
    except Exception:
        log.exception("unexpected error")
        status, headers = 500, []
        body = b'{"error":{"code":"internal","message":"an unexpected error; it has been logged","details":{}}}'
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *headers]})
    await send({"type": "http.response.body", "body": body})


async def _read(receive: Receive) -> bytes:
    """The whole request body, as `Request.body()` reads it (the gateway's middleware has already
    refused one over the size limit)."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise disconnected()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise disconnected()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _query_value(query: bytes, name: str) -> str:
    """The last value of `name` in a query string, as Starlette's `request.query_params[name]` reads
    it ("" when absent); split by hand when nothing in it is escaped (the snippet's `?k=<key>`)."""
    text = query.decode("latin-1")
    if "%" in text or "+" in text:
        return dict(parse_qsl(text, keep_blank_values=True)).get(name, "")
    found = ""
    for pair in text.split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            found = value
    return found


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers as a plain dict, read once (Starlette's `Headers.get` scans the list on
    every call, and the collect path asks eight times). A repeated header keeps its first value, as
    `Headers.get` answers."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(scope["headers"])}


@lru_cache(maxsize=1024)
def _cors_raw(origin: str) -> tuple[tuple[bytes, bytes], ...]:
    """`_cors(origin)` as ASGI headers; cached, as a key's allowed origins are few (the cache is
    bounded all the same: an allowed origin may come spelt in more than one way)."""
    return tuple((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in _cors(origin).items())


async def answer_collect(state: Tracking, headers: dict[str, str], raw: bytes, k: str
                         ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """A collect request's answer (status, JSON body, CORS headers), or the ApiError to answer."""
    key, cors = _site_of(state, k, headers)
    try:
        parsed = parse_body(raw)
    except ApiError as exc:
        raise _with_cors(exc, cors) from exc
    body = _fields(parsed, cors, _COLLECT_FIELDS)
    visitor_id = _visitor(body.get("visitor_id"), cors)
    events = body.get("events")
    most = collect_policy().max_events_per_request
    if not isinstance(events, list) or not 1 <= len(events) <= most:
        raise ApiError(422, "invalid", f"events must be a list of 1 to {most} events",
                       {"fields": {"events": f"must be a list of 1 to {most} events"}}, cors)
    cors_raw = list(_cors_raw(cors["Access-Control-Allow-Origin"]))
    ignored = not_a_visitor(headers) or privacy_refusal(key, headers)
    if ignored:
        answer: Collected = {"accepted": 0, "duplicates": 0, "rejected": [], "ignored": ignored}
        return 202, jsoncodec.dumps(answer).encode(), cors_raw
    good: list[CollectedEvent] = []
    rejected: list[RejectedEvent] = []
    for i, raw_event in enumerate(events):
        event, problem = check_event(raw_event)
        if event is None:
            rejected.append({"index": i, "error": problem})
        else:
            good.append(event)
    # Counted against the limits and appended to the collect stream in one batch with concurrent requests
    # (all its events count, the rejected too). Answered once Redis has them: scoring stores them soon after.
    try:
        result = await state.collector.collect(key, visitor_id, len(events), good)
    except (RedisError, NotReplicated) as exc:  # not kept (or not surely): the snippet sends again
        raise _limits_down(exc, cors) from exc
    if isinstance(result, Refusal):
        raise _refusal(result, cors)
    answer = {"accepted": result.accepted, "duplicates": result.duplicates, "rejected": rejected}
    return 202, jsoncodec.dumps(answer).encode(), cors_raw


_COLLECT_FIELDS = {"visitor_id", "events"}


@router.post("/v1/identify", summary="Who this visitor is: an email, or the signed link of an email click",
             responses={200: {"model": Identified}})
async def identify(request: Request, k: str = Query(..., max_length=128)) -> JSONResponse:
    key, cors = _site(request, k)
    body = await _body(request, cors, {"visitor_id", "email", "first_name", "last_name", "link"})
    visitor_id = _visitor(body.get("visitor_id"), cors)
    if not_a_visitor(request.headers):
        ignored: Identified = {"identified": False, "merged": 0, "ignored": not_a_visitor(request.headers)}
        return JSONResponse(ignored, 200, cors)
    await _limit(request, key, visitor_id, cors)
    lead_id = ""
    link = body.get("link")
    if link is not None:
        if not isinstance(link, str):
            raise ApiError(422, "invalid", "link must be a string", {"fields": {"link": "must be a string"}}, cors)
        settings: Settings = request.app.state.mesh.settings
        try:
            lead_id = linktoken.verify((settings.secret, settings.secret_previous), link, datetime.now(UTC))
        except linktoken.LinkTokenError as exc:
            raise ApiError(422, "invalid", str(exc), {"fields": {"link": str(exc)}}, cors) from exc
    fields = {name: body[name] for name in ("email", "first_name", "last_name") if body.get(name) is not None}
    if not lead_id and "email" not in fields:
        raise ApiError(422, "invalid", "an email or a link is required",
                       {"fields": {"email": "is required without a link"}}, cors)
    reply = await _call(_scoring(request).IdentifyVisitor(scoring_pb2.IdentifyVisitorRequest(
        visitor_id=visitor_id, lead_id=lead_id, fields_json=json.dumps(fields)), timeout=_timeout(request)), cors)
    identified: Identified = {"identified": True, "merged": reply.merged}
    return JSONResponse(identified, 200, cors)


@router.get("/v1/personalization", summary="What the site should show this visitor now",
            responses={200: {"model": VisitorPersonalization}})
async def personalization(request: Request, k: str = Query(..., max_length=128),
                          v: str = Query(..., max_length=64)) -> JSONResponse:
    key, cors = _site(request, k)
    visitor_id = _visitor(v, cors)
    await _limit(request, key, visitor_id, cors, 0)
    scoring = _scoring(request)
    lead_id, profile = "", ""
    try:
        found = await scoring.GetVisitor(scoring_pb2.VisitorRequest(visitor_id=visitor_id), timeout=_timeout(request))
        lead_id = found.lead_id
        profile = "" if lead_id else json_format.MessageToJson(found.profile)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise _rpc_error(exc, cors) from exc
        profile = json_format.MessageToJson(scoring_pb2.Lead(id=f"visitor:{visitor_id}", lifecycle_stage="subscriber"))
    messaging = messaging_pb2_grpc.MessagingStub(request.app.state.mesh.channel("messaging"))
    reply = await _call(messaging.Personalization(messaging_pb2.PersonalizationRequest(
        lead_id=lead_id, anonymous_profile_json=profile), timeout=_timeout(request)), cors)
    body: VisitorPersonalization = {
        "known": bool(lead_id), "segment": reply.segment or None, "featured_countries": list(reply.featured_countries),
        "recommended_content": json.loads(reply.recommended_content_json or "[]"),
        "next_best_action": json.loads(reply.next_best_action_json or "{}")}
    return JSONResponse(body, 200, cors)


@router.get("/v1/form", summary="The next fields a form should ask this visitor",
            responses={200: {"model": FormFields}})
async def form_fields(request: Request, k: str = Query(..., max_length=128), v: str = Query(..., max_length=64),
                      limit: int = Query(0, ge=0, le=20)) -> JSONResponse:
    key, cors = _site(request, k)
    visitor_id = _visitor(v, cors)
    await _limit(request, key, visitor_id, cors, 0)
    reply = await _call(_scoring(request).NextFormFields(scoring_pb2.NextFieldsRequest(
        visitor_id=visitor_id, limit=limit), timeout=_timeout(request)), cors)
    body: FormFields = {"fields": [{"key": f.key, "label": f.label, "kind": f.kind, "choices": list(f.choices)}
                                   for f in reply.fields]}
    return JSONResponse(body, 200, cors)


@router.post("/v1/form", summary="A progressive form's answers", responses={200: {"model": FormStored}})
async def form_answers(request: Request, k: str = Query(..., max_length=128)) -> JSONResponse:
    key, cors = _site(request, k)
    body = await _body(request, cors, {"visitor_id", "answers"})
    visitor_id = _visitor(body.get("visitor_id"), cors)
    if not_a_visitor(request.headers):
        ignored: FormStored = {"stored": 0, "identified": False, "merged": 0, "ignored": not_a_visitor(request.headers)}
        return JSONResponse(ignored, 200, cors)
    await _limit(request, key, visitor_id, cors)
    reply = await _call(_scoring(request).SubmitForm(scoring_pb2.SubmitFormRequest(
        visitor_id=visitor_id, answers_json=json.dumps(body.get("answers"))), timeout=_timeout(request)), cors)
    stored: FormStored = {"stored": reply.stored, "identified": bool(reply.lead_id), "merged": reply.merged}
    return JSONResponse(stored, 200, cors)
