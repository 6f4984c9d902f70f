"""Events: single and batch ingestion with idempotency keys. A 202 means the event is stored."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Literal, NotRequired

import grpc
from fastapi import APIRouter, Depends, Header, Request

from gateway.convert import parse_time, require_object
from gateway.deps import ApiError, Mesh, json_body, json_body_items, mesh, require_key
from gateway.shapes import DocumentedRoute, TypedDict
from nurture import datafiles, jsoncodec, limits, revenue, telemetry, times
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.jsontypes import JsonObject, JsonValue

router = APIRouter(prefix="/v1", tags=["events"], dependencies=[Depends(require_key)],
                   route_class=DocumentedRoute)
FIELDS = {"lead_id", "type", "properties", "occurred_at", "idempotency_key"}


DATA = Path(__file__).parents[1] / "data" / "events.yaml"


class EventRules(datafiles.Strict):
    required: list[str] = []
    choices: dict[str, list[str]] = {}
    revenue: bool = False   # a won deal's: `amount` and `currency` checked and converted (nurture.revenue)


class EventProperties(datafiles.Strict):
    """`data/events.yaml`: the kinds of the canonical properties, and per event type what it must carry."""

    kinds: dict[str, Literal["string", "time", "number"]]
    events: dict[str, EventRules] = {}


@cache
def event_properties(path: Path = DATA) -> EventProperties:
    return datafiles.load(EventProperties, path)


def property_problems(type_: JsonValue, props: JsonObject) -> dict[str, str]:
    """Each canonical property of the wrong kind, missing or outside its choices, by `properties.<name>`.
    Journeys schedule from the times and enter on what the rules name: a value that is not one would be
    stored and then silently do nothing."""
    rules = event_properties()
    problems: dict[str, str] = {}
    for name, kind in rules.kinds.items():
        value = props.get(name)
        if value is None:
            continue
        field = f"properties.{name}"
        if kind == "time":
            try:
                parse_time(value, field)
            except ApiError as exc:
                problems[field] = _field_problem(exc, field)
        elif kind == "string" and not isinstance(value, str):
            problems[field] = "must be a string"
        elif kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
            problems[field] = "must be a number"
    own = rules.events.get(type_) if isinstance(type_, str) else None
    if own is not None:
        for name in own.required:
            if props.get(name) is None:
                problems.setdefault(f"properties.{name}", f"is required for {type_}")
        for name, allowed in own.choices.items():
            if props.get(name) is not None and props[name] not in allowed:
                problems.setdefault(f"properties.{name}", f"must be one of {', '.join(allowed)} for {type_}")
    return problems


def with_revenue(type_: JsonValue, props: JsonObject, problems: dict[str, str]) -> JsonObject:
    """A won deal's properties with its `revenue` in the one currency reports add up (`revenue_currency`)
    and its `currency` as the code read, as crm_sync's ReportDeal gives them; problems added by field.
    An amount in any currency was counted as it was, and a text amount silently as 0; a caller's own
    `revenue` would have been counted in place of the amount, so it is replaced."""
    own = event_properties().events.get(type_) if isinstance(type_, str) else None
    if own is None or not own.revenue:
        return props
    amount = props.get("amount", 0)
    if amount is None:
        amount = 0
    currency = props.get("currency", "")
    if currency is None:
        currency = ""
    if (why := revenue.amount_problem(amount)) is not None:
        problems["properties.amount"] = why
        return props
    if not isinstance(currency, str):
        problems["properties.currency"] = "must be a string (an ISO 4217 code)"
        return props
    rates = revenue.load_rates()
    assert isinstance(amount, int | float)
    try:
        converted, code = revenue.convert(rates, float(amount), currency, "properties.currency",
                                          "properties.amount")
    except ValueError as exc:
        name = "properties.amount" if str(exc).startswith("properties.amount") else "properties.currency"
        problems[name] = str(exc).removeprefix(f"{name} ")
        return props
    return {**props, "currency": code, "revenue": converted, "revenue_currency": rates.currency}


class EventAccepted(TypedDict):
    """A 202 for one event: it is stored (`duplicate`: under an idempotency key seen before)."""

    event_id: str
    duplicate: bool


class Problem(TypedDict):
    """The API's error body's inner object (nurture.errors), for one event of a batch."""

    code: str
    message: str
    details: NotRequired[JsonObject]   # the gateway's own checks give them; a service's refusal does not


class Rejected(TypedDict):
    index: int   # the event's position in the batch
    error: Problem


class BatchAccepted(TypedDict):
    accepted: int
    duplicates: int
    event_ids: list[str]   # the accepted events', in batch order
    rejected: list[Rejected]   # by index


# How far ahead of the clock an event may say it happened (clients' clocks drift; a day is generous).
FUTURE_SLACK = timedelta(days=1)


def _field_problem(exc: ApiError, name: str) -> str:
    return exc.message.removeprefix(f"{name} ")


def to_event(raw: JsonValue, header_key: str | None = None, now: datetime | None = None) -> scoring_pb2.Event:
    """One API event as a proto event, or ApiError(422) naming every problem."""
    body = require_object(raw, "event")
    problems: dict[str, str] = {}
    for name in sorted(set(body) - FIELDS):
        problems[name] = "is not an event field"
    lead_id, type_ = body.get("lead_id"), body.get("type")
    if not isinstance(lead_id, str) or not lead_id:
        problems["lead_id"] = "is required (string)"
    if not isinstance(type_, str) or not type_:
        problems["type"] = "is required (string)"
    props = body.get("properties", {})
    if props is None:
        props = {}
    if not isinstance(props, dict):
        problems["properties"] = "must be an object"
    else:
        problems.update(property_problems(type_, props))
        props = with_revenue(type_, props, problems)
    key = body.get("idempotency_key", header_key)
    if key is not None and (not isinstance(key, str) or not key or len(key) > 200):
        problems["idempotency_key"] = "must be a non-empty string of at most 200 characters"
    elif header_key is not None and key != header_key:
        # Two different keys for one event: taking either would dedupe against the wrong one.
        problems["idempotency_key"] = "differs from the Idempotency-Key header; send one key"
    event = scoring_pb2.Event(lead_id=lead_id if isinstance(lead_id, str) else "",
                              type=type_ if isinstance(type_, str) else "", source="api",
                              idempotency_key=key if isinstance(key, str) else "")
    if body.get("occurred_at") is not None:
        try:
            occurred = parse_time(body["occurred_at"], "occurred_at")
            if now is not None and occurred > now + FUTURE_SLACK:
                problems["occurred_at"] = f"is in the future (now is {times.rfc3339(now)})"
            else:
                event.occurred_at.FromDatetime(occurred)
        except ApiError as exc:
            problems["occurred_at"] = _field_problem(exc, "occurred_at")
    if problems:
        raise ApiError(422, "invalid", "; ".join(f"{k} {v}" for k, v in problems.items()), {"fields": problems})
    event.properties_json = jsoncodec.dumps(props)
    return event


# An open or click an integrator posts with the message's id but not its journey fields is the message's:
# its record knows the journey, step and template, and its template the stage, topic, format and interest
# (as `category`) a tracked one carries, so it is credited where a tracked one is: the journey's, the
# template's, the topic's and the format's figures, and the interest branches that listen to a click
# (docs/API.md, "Analytics"). Fields the caller did pass are kept.
ENGAGEMENTS = frozenset({"email_opened", "email_clicked"})
MESSAGE_FIELDS = ("journey", "step", "template")
CONTENT_FIELDS = ("stage", "topic", "format", "category")


def unknown_message(mid: str) -> ApiError:
    return ApiError(422, "unknown_message", f"properties.message_id {mid!r} is none of this lead's messages",
                    {"fields": {"properties.message_id": "none of this lead's messages (GET /v1/leads/{id}/messages)"}})


async def credit_to_messages(m: Mesh, events: list[scoring_pb2.Event]) -> dict[int, ApiError]:
    """Fill the missing journey fields of each open or click that names a message of its lead. Answers
    the events (by position) that name a message their lead never had: an engagement with no message
    of ours behind it would be counted under no journey, so it is refused (`unknown_message`) rather
    than taken. With messaging down nothing can be checked: the events go as posted."""
    wanting: dict[str, list[tuple[int, scoring_pb2.Event, JsonObject, str]]] = {}
    for i, event in enumerate(events):
        if event.type not in ENGAGEMENTS:
            continue
        props = jsoncodec.loads(event.properties_json or "{}")
        if not isinstance(props, dict):
            continue
        mid = props.get("message_id")
        if isinstance(mid, str) and mid and any(not props.get(f) for f in (*MESSAGE_FIELDS, "topic")):
            wanting.setdefault(event.lead_id, []).append((i, event, props, mid))
    refused: dict[int, ApiError] = {}
    if not wanting:  # the usual post (a page view, a form): nothing to ask messaging
        return refused
    stub = m.stub(messaging_pb2_grpc.MessagingStub, "messaging")
    for lead_id, items in wanting.items():
        # Only the named messages, by id (at most a batch's 1,000): never the lead's whole history.
        ids = sorted({mid for _, _, _, mid in items})
        try:
            reply = await stub.ListMessages(messaging_pb2.ListMessagesRequest(lead_id=lead_id, ids=ids,
                                                                              limit=len(ids)), timeout=m.timeout)
        except grpc.aio.AioRpcError:
            continue   # messaging is down: the event is still taken, as posted (it scores and moves journeys)
        known = {msg.id: msg for msg in reply.items}
        for i, event, props, mid in items:
            msg = known.get(mid)
            if msg is None:
                refused[i] = unknown_message(mid)
                continue
            for name in MESSAGE_FIELDS:
                if not props.get(name):
                    props[name] = getattr(msg, name)
            for name in CONTENT_FIELDS:
                if not props.get(name) and msg.content.get(name):
                    props[name] = msg.content[name]
            event.properties_json = jsoncodec.dumps(props)
    return refused


def _error(result: scoring_pb2.EventResult) -> ApiError:
    if result.error_code == "unknown_lead":
        return ApiError(404, "unknown_lead", result.error_message)
    if result.error_code == "idempotency_conflict":
        return ApiError(409, "idempotency_conflict", result.error_message)
    return ApiError(422, result.error_code or "invalid", result.error_message)


@router.post("/events", status_code=202, summary="Record one event (durable on 202)")
async def post_event(
    request: Request, body: JsonValue = Depends(json_body), idempotency_key: str | None = Header(None)
) -> EventAccepted:
    # The gateway's ASGI layer answers this route itself through `record_event` (see gateway/app.py);
    # this declaration documents it and serves any request that reaches FastAPI.
    return await record_event(request, body, idempotency_key)


async def record_event(request: Request, body: JsonValue, idempotency_key: str | None) -> EventAccepted:
    """The 202 body for one event, or ApiError / a gRPC error."""
    event = to_event(body, idempotency_key, request.app.state.clock.now())
    refused = await credit_to_messages(request.app.state.mesh, [event])
    if refused:
        raise refused[0]
    result = await request.app.state.events.send(event)
    if result.error_code:
        raise _error(result)
    # The request's span names the lead and event (recorded spans only): where ops start a lead's search.
    telemetry.tag_ids(lead_ids=(event.lead_id,), event_ids=(result.event_id,))
    return {"event_id": result.event_id, "duplicate": result.duplicate}


@router.post("/events:batch", status_code=202, summary="Record up to 1,000 events; good ones are taken")
async def post_batch(request: Request, body: JsonValue = Depends(json_body_items),
                     m: Mesh = Depends(mesh)) -> BatchAccepted:
    body = require_object(body)
    raw = body.get("events")
    if not isinstance(raw, list):
        raise ApiError(422, "invalid", "events must be a list")
    limit = m.settings.max_batch
    if len(raw) > limit:
        raise ApiError(413, "too_large", f"a batch holds at most {limit} events, got {len(raw)}", {"max": limit})
    rejected: list[Rejected] = []
    events: list[scoring_pb2.Event] = []
    index: list[int] = []
    now = request.app.state.clock.now()
    for i, item in enumerate(raw):
        try:
            # The body was parsed, not checked: each event is held to the input limits on its own.
            problems = limits.problems_in(item)
            if problems:
                raise ApiError(422, "invalid", "; ".join(f"{k} {v}" for k, v in problems.items()),
                               {"fields": problems})
            events.append(to_event(item, now=now))
            index.append(i)
        except ApiError as exc:
            rejected.append({"index": i, "error": {"code": exc.code, "message": exc.message, "details": exc.details}})
    duplicates = 0
    ids: list[str] = []
    refused = await credit_to_messages(m, events)
    for at in sorted(refused, reverse=True):
        err = refused[at]
        rejected.append({"index": index[at],
                         "error": {"code": err.code, "message": err.message, "details": err.details}})
        del events[at], index[at]
    if events:
        reply = await scoring_pb2_grpc.ScoringStub(m.channel("scoring")).IngestEvents(
            scoring_pb2.IngestRequest(events=events), timeout=m.timeout * 6)
        for i, result in zip(index, reply.results, strict=True):
            if result.error_code:
                err = _error(result)
                rejected.append({"index": i, "error": {"code": err.code, "message": err.message}})
            else:
                duplicates += result.duplicate
                ids.append(result.event_id)
    rejected.sort(key=lambda r: r["index"])
    return {"accepted": len(ids), "duplicates": duplicates, "event_ids": ids, "rejected": rejected}
