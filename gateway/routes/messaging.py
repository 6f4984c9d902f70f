"""Messaging: a lead's messages, tracking (open pixel, click redirect), unsubscribe (RFC 8058 one-click
and a preferences page), website personalisation, ad audiences and A/B
reports (templates themselves: routes/templates.py).

Tracking and unsubscribe links carry HMAC-signed tokens that only the messaging service verifies; a
click redirects only to the destination signed into its token, so there is no open redirect.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from datetime import UTC, datetime
from urllib.parse import parse_qs

import grpc
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from google.protobuf.timestamp_pb2 import Timestamp
from redis.exceptions import RedisError

from gateway.deps import ApiError, Mesh, mesh, require_key
from gateway.shapes import DocumentedRoute, TypedDict
from gateway.tracking.clicks import identified_destination
from nurture import redisconn, times, unsubscribequeue
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.jsontypes import JsonValue

log = logging.getLogger(__name__)

router = APIRouter(tags=["messaging"])
keyed = APIRouter(prefix="/v1", tags=["messaging"], dependencies=[Depends(require_key)], route_class=DocumentedRoute)


class Message(TypedDict):
    id: str
    journey: str
    journey_version: int
    step: str
    channel: str
    template: str
    category: str
    subject: str
    status: str   # scheduled | sent | suppressed | failed
    at: str
    due_at: str
    reason: str
    attempts: int
    variant: str
    template_version: int | None


class MessageList(TypedDict):
    items: list[Message]


class Personalization(TypedDict):
    segment: str | None
    featured_countries: list[str]
    recommended_content: JsonValue   # messaging's list of {key, title, url, reason}
    next_best_action: JsonValue      # messaging's {action, label, url, reason}
    journeys_available: bool


class AudienceName(TypedDict):
    name: str
    journey: str
    stage: str | None
    description: str


class AudienceList(TypedDict):
    items: list[AudienceName]


class SuppressedMember(TypedDict):
    lead_id: str
    reason: str


class Audience(TypedDict):
    name: str
    members: list[str]   # lead ids
    next_cursor: str | None
    suppressed: list[SuppressedMember]
    journeys_available: bool


class AbVariant(TypedDict):
    name: str
    sent: int
    opened: int
    clicked: int
    open_rate: float
    click_rate: float


class AbReport(TypedDict):
    template: str
    metric: str   # click_rate | open_rate
    winner: str | None
    significant: bool
    p_value: float
    z: float
    explanation: str
    variants: list[AbVariant]

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate, private", "Pragma": "no-cache"}


def stub(m: Mesh) -> messaging_pb2_grpc.MessagingStub:
    return messaging_pb2_grpc.MessagingStub(m.channel("messaging"))


def _iso(ts: Timestamp) -> str:
    return times.rfc3339(ts.ToDatetime())


def _invalid_token(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() is grpc.StatusCode.INVALID_ARGUMENT


# The API's statuses are scheduled | sent | suppressed | failed. Messaging's `sending` is its recorded
# intent while the SMTP transaction runs (or after a crash, until the resend): not sent yet, to a user.
PUBLIC_STATUS = {"sending": "scheduled"}


@keyed.get("/leads/{lead_id}/messages")
async def lead_messages(lead_id: str, limit: int = Query(1000, ge=1, le=10000),
                        m: Mesh = Depends(mesh)) -> MessageList:
    # An unknown (or erased) lead is 404 like its other resources, not an empty list.
    await scoring_pb2_grpc.ScoringStub(m.channel("scoring")).GetLead(scoring_pb2.GetLeadRequest(id=lead_id),
                                                                     timeout=m.timeout)
    reply = await stub(m).ListMessages(messaging_pb2.ListMessagesRequest(lead_id=lead_id, limit=limit),
                                       timeout=m.timeout)
    return {"items": [{
        "id": i.id, "journey": i.journey, "journey_version": i.journey_version, "step": i.step,
        "channel": i.channel, "template": i.template, "category": i.category, "subject": i.subject,
        "status": PUBLIC_STATUS.get(i.status, i.status), "at": _iso(i.at), "due_at": _iso(i.due_at), "reason": i.reason,
        "attempts": i.attempts, "variant": i.variant, "template_version": i.template_version or None}
        for i in reply.items]}


@keyed.get("/leads/{lead_id}/personalization")
async def personalization(lead_id: str, m: Mesh = Depends(mesh)) -> Personalization:
    reply = await stub(m).Personalization(messaging_pb2.PersonalizationRequest(lead_id=lead_id), timeout=m.timeout)
    return {"segment": reply.segment or None, "featured_countries": list(reply.featured_countries),
            "recommended_content": json.loads(reply.recommended_content_json or "[]"),
            "next_best_action": json.loads(reply.next_best_action_json or "{}"),
            "journeys_available": reply.journeys_available}


@keyed.get("/audiences", summary="The ad and social audience names there are (journeys and journey.stage)")
async def audiences(m: Mesh = Depends(mesh)) -> AudienceList:
    # Audiences are kept in step with journeys, so their names are the journeys' keys and stages:
    # listing them lets a user discover what GET /v1/audiences/{name} accepts.
    from nurture.api.journeys.v1 import journeys_pb2, journeys_pb2_grpc

    journeys = journeys_pb2_grpc.JourneysStub(m.channel("journeys"))
    listed = await journeys.ListJourneys(journeys_pb2.ListJourneysRequest(), timeout=m.timeout)
    items: list[AudienceName] = []
    for summary in listed.journeys:
        if not summary.published_version:
            continue  # a draft nobody can be in yet
        got = await journeys.GetJourney(journeys_pb2.GetJourneyRequest(key=summary.key), timeout=m.timeout)
        definition = json.loads(got.definition_json or "{}")
        items.append({"name": summary.key, "journey": summary.key, "stage": None,
                      "description": f"active in {summary.name}"})
        for stage in definition.get("stages") or []:
            if isinstance(stage, dict) and stage.get("id"):
                items.append({"name": f"{summary.key}.{stage['id']}", "journey": summary.key, "stage": stage["id"],
                              "description": f"active in {summary.name}, {stage.get('name', stage['id'])} stage"})
    return {"items": items}


@keyed.get("/audiences/{name}")
async def audience(name: str, cursor: str = "", limit: int = Query(1000, ge=1, le=10000),
                   m: Mesh = Depends(mesh)) -> Audience:
    if cursor and not cursor.isdigit():
        # The service's cursor is a position in the member list; anything else was not one it gave.
        raise ApiError(422, "invalid", "cursor is not one this listing returned; use next_cursor as given",
                       {"fields": {"cursor": "must be a next_cursor from the same listing"}})
    reply = await stub(m).Audience(messaging_pb2.AudienceRequest(name=name, cursor=cursor, limit=limit),
                                   timeout=m.timeout)
    return {"name": reply.name, "members": list(reply.lead_ids), "next_cursor": reply.next_cursor or None,
            "suppressed": [{"lead_id": lead, "reason": why}
                           for lead, why in zip(reply.suppressed, reply.suppressed_reasons, strict=False)],
            "journeys_available": reply.journeys_available}


@keyed.get("/templates/{key}/ab-report")
async def ab_report(key: str, m: Mesh = Depends(mesh)) -> AbReport:
    r = await stub(m).AbReport(messaging_pb2.AbReportRequest(template=key), timeout=m.timeout)
    return {"template": r.template, "metric": r.metric, "winner": r.winner or None, "significant": r.significant,
            "p_value": r.p_value, "z": r.z, "explanation": r.explanation,
            "variants": [{"name": v.name, "sent": v.sent, "opened": v.opened, "clicked": v.clicked,
                          "open_rate": v.open_rate, "click_rate": v.click_rate} for v in r.variants]}


@router.get("/t/o/{token}", include_in_schema=True)
async def open_pixel(token: str, request: Request, m: Mesh = Depends(mesh)) -> Response:
    """Always answers the pixel (a broken image helps nobody); records the open when the token verifies."""
    try:
        await stub(m).Track(messaging_pb2.TrackRequest(token=token, kind="open",
                                                       user_agent=request.headers.get("user-agent", "")),
                            timeout=m.timeout)
    except grpc.aio.AioRpcError as exc:
        if not _invalid_token(exc):
            log.warning("open not recorded: %s", exc.code().name)
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


@router.get("/t/c/{token}")
async def click(token: str, request: Request, m: Mesh = Depends(mesh)) -> Response:
    """Records the click, then redirects to the signed destination; a tampered token gets 400."""
    try:
        reply = await stub(m).Track(messaging_pb2.TrackRequest(token=token, kind="click",
                                                               user_agent=request.headers.get("user-agent", "")),
                                    timeout=m.timeout)
    except grpc.aio.AioRpcError as exc:
        if _invalid_token(exc):
            raise ApiError(400, "invalid_link", "this link is not valid") from exc
        raise
    if not reply.url.startswith(("https://", "http://")):
        raise ApiError(400, "invalid_link", "this link has no destination")
    # On a tracked website the visitor becomes the person who clicked (docs/API.md "Website tracking").
    url = identified_destination(reply.url, reply.lead_id, request.app.state.tracking.keys, m.settings.secret)
    return RedirectResponse(url, status_code=302, headers=NO_STORE)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
        f"content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}</title></head>"
        f"<body style=\"font-family:Arial,sans-serif;max-width:560px;margin:40px auto;padding:0 16px;\">"
        f"<h1 style=\"font-size:22px;\">{html.escape(title)}</h1>{body}</body></html>",
        status_code=status, headers=NO_STORE)


@router.get("/u/{token}", response_class=HTMLResponse)
async def unsubscribe_page(token: str, m: Mesh = Depends(mesh)) -> HTMLResponse:
    """A page with a confirm button and a choice of what to stop; nothing changes until it is posted."""
    try:
        reply = await stub(m).Unsubscribe(messaging_pb2.UnsubscribeRequest(token=token, dry_run=True),
                                          timeout=m.timeout)
    except grpc.aio.AioRpcError as exc:
        if _invalid_token(exc):
            return _page("This link is not valid", "<p>Please use the link from your most recent email.</p>", 400)
        raise
    action = f"/u/{html.escape(token)}"
    kind = "webinar and account reminders" if reply.category == "transactional" else "BorderBridge guidance emails"
    body = (
        f"<form method=\"post\" action=\"{action}\"><p>Choose what you no longer want to receive:</p>"
        f"<p><label><input type=\"radio\" name=\"scope\" value=\"{html.escape(reply.scope)}\" checked> "
        f"{html.escape(kind)}</label></p>"
        "<p><label><input type=\"radio\" name=\"scope\" value=\"all\"> every email from BorderBridge</label></p>"
        "<p><button type=\"submit\" style=\"padding:10px 18px;\">Unsubscribe</button></p></form>")
    return _page("Unsubscribe", body)


@router.post("/u/{token}", response_class=HTMLResponse)
async def unsubscribe(token: str, request: Request, m: Mesh = Depends(mesh)) -> HTMLResponse:
    """RFC 8058 one-click (body `List-Unsubscribe=One-Click`) or the page's form; takes effect at once."""
    raw = (await request.body())[:4096].decode("utf-8", "replace")
    form = parse_qs(raw)
    one_click = form.get("List-Unsubscribe", [""])[0] == "One-Click"
    scope = form.get("scope", [""])[0]
    if scope not in ("", "nurture", "transactional", "all"):
        raise ApiError(422, "invalid", "scope must be nurture, transactional or all")
    if len(token) > unsubscribequeue.MAX_TOKEN_CHARS:
        return _page("This link is not valid", "<p>Please use the link from your most recent email.</p>", 400)
    source = "one_click" if one_click else "page"
    try:
        reply = await stub(m).Unsubscribe(messaging_pb2.UnsubscribeRequest(token=token, scope=scope, source=source),
                                          timeout=m.timeout)
    except grpc.aio.AioRpcError as exc:
        if _invalid_token(exc):
            return _page("This link is not valid", "<p>Please use the link from your most recent email.</p>", 400)
        if exc.code() not in _AWAY:
            raise
        # Messaging is slow or away: a one-click POST is sent once, so the request is queued for it
        # (nurture.unsubscribequeue) and the person is answered; a 503 only when Redis is away too.
        if not await _queue_unsubscribe(m, token, scope, source, exc):
            raise ApiError(503, "unavailable", "unsubscribes cannot be taken right now: retry later",
                           headers={"Retry-After": str(unsubscribequeue.RETRY_AFTER_S)}) from exc
        return _page("You are unsubscribed", "<p>Your request is recorded and takes effect within moments.</p>")
    what = "any email from BorderBridge" if reply.scope == "all" else (
        "webinar and account reminders" if reply.scope == "transactional" else "BorderBridge guidance emails")
    return _page("You are unsubscribed", f"<p>You will no longer receive {html.escape(what)}.</p>")


_AWAY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
         grpc.StatusCode.RESOURCE_EXHAUSTED)


async def _queue_unsubscribe(m: Mesh, token: str, scope: str, source: str, cause: grpc.aio.AioRpcError) -> bool:
    """Queue the request for messaging; False when the queue is full (nurture.unsubscribequeue)."""
    log.warning("unsubscribe: messaging answered %s; queuing the request", cause.code().name)
    try:
        client = redisconn.connect(m.settings)
        try:
            [entry] = await redisconn.run_script(client, unsubscribequeue.ENQUEUE, [(
                [unsubscribequeue.STREAM],
                [unsubscribequeue.MAX_ENTRIES, token, scope, source, times.rfc3339(datetime.now(UTC))])])
        finally:
            await client.aclose()
    except (RedisError, OSError) as exc:  # Redis away too: the caller's 503, with Retry-After
        raise cause from exc
    if entry is None:
        log.warning("unsubscribe: the queue holds %d requests (messaging away?): refusing",
                    unsubscribequeue.MAX_ENTRIES)
        return False
    return True


router.include_router(keyed)
