"""Deliverability: DKIM records to publish, the bounce receiver, rolling rates per sending domain and
mailbox provider, paused providers and the warm-up (messaging's Deliverability service); resuming a
paused provider; delivery events from a provider's webhook."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from gateway import roles
from gateway.convert import require_object
from gateway.deps import ApiError, Mesh, json_body, mesh, require_key
from gateway.shapes import DocumentedRoute, TypedDict
from nurture import times
from nurture.api.messaging.v1 import deliverability_pb2, deliverability_pb2_grpc
from nurture.jsontypes import JsonObject, JsonValue

router = APIRouter(prefix="/v1/deliverability", tags=["deliverability"], dependencies=[Depends(require_key)],
                   route_class=DocumentedRoute)

# SendGrid-like event names → ours (others, such as opens and clicks, are not delivery outcomes).
SENDGRID = {"bounce": "hard_bounce", "dropped": "hard_bounce", "spamreport": "complaint", "deferred": "soft_bounce",
            "delivered": "delivered", "blocked": "soft_bounce"}
MAX_EVENTS = 1000


def stub(m: Mesh) -> deliverability_pb2_grpc.DeliverabilityStub:
    return deliverability_pb2_grpc.DeliverabilityStub(m.channel("messaging"))


class Dkim(TypedDict):
    domain: str
    selector: str
    dns_txt: str


class DkimRecord(TypedDict):
    domain: str
    selector: str
    name: str      # where to publish it: <selector>._domainkey.<domain>
    dns_txt: str
    signing: bool  # signs new mail (the others stay published during a rotation)


class ProviderRate(TypedDict):
    domain: str
    provider: str
    sent: int
    bounced_hard: int
    bounced_soft: int
    complaints: int
    complaint_rate: float
    hard_bounce_rate: float
    warnings: list[str]


class Paused(TypedDict):
    provider: str
    since: str
    why: str


class WarmupDomain(TypedDict):
    domain: str
    day: int
    limit: int | None   # null: the ramp is over
    sent_today: int


class Warmup(TypedDict):
    domains: list[WarmupDomain]


class Deliverability(TypedDict):
    dkim: Dkim | None   # the signing key's record
    dkim_records: list[DkimRecord]
    bounce_smtp: str
    bounce_domain: str
    window_days: int
    rates: list[ProviderRate]
    paused: list[Paused]
    warmup: Warmup


class Resumed(TypedDict):
    provider: str
    was_paused: bool
    by: str   # who resumed it: the key's role and fingerprint


class EventsApplied(TypedDict):
    applied: int
    ignored: list[str]   # "<index>: why"


@router.get("")
async def deliverability(m: Mesh = Depends(mesh)) -> Deliverability:
    reply = await stub(m).Get(deliverability_pb2.DeliverabilityRequest(), timeout=m.timeout)
    signing = next((r for r in reply.dkim if r.signing), None)
    return {
        "dkim": {"domain": signing.domain, "selector": signing.selector, "dns_txt": signing.dns_txt}
        if signing else None,
        "dkim_records": [{"domain": r.domain, "selector": r.selector, "name": f"{r.selector}._domainkey.{r.domain}",
                          "dns_txt": r.dns_txt, "signing": r.signing} for r in reply.dkim],
        "bounce_smtp": reply.bounce_smtp, "bounce_domain": reply.bounce_domain, "window_days": reply.window_days,
        "rates": [{"domain": r.domain, "provider": r.provider, "sent": r.sent, "bounced_hard": r.bounced_hard,
                   "bounced_soft": r.bounced_soft, "complaints": r.complaints, "complaint_rate": r.complaint_rate,
                   "hard_bounce_rate": r.hard_bounce_rate, "warnings": list(r.warnings)} for r in reply.rates],
        "paused": [{"provider": p.provider, "since": times.rfc3339(p.since.ToDatetime()), "why": p.why}
                   for p in reply.paused],
        "warmup": {"domains": [{"domain": w.domain, "day": w.day, "limit": w.limit or None,
                                "sent_today": w.sent_today} for w in reply.warmup]},
    }


@router.post("/resume")
async def resume(request: Request, body: JsonValue = Depends(json_body), m: Mesh = Depends(mesh)) -> Resumed:
    provider = require_object(body).get("provider")
    if not isinstance(provider, str) or not provider.strip() or len(provider) > 64:
        raise ApiError(422, "invalid", "provider is required (a provider name, e.g. gmail)",
                       {"fields": {"provider": "a non-empty string of at most 64 characters"}})
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    by = f"{getattr(request.state, 'role', '?')} key {roles.fingerprint(token)[:12]}"
    reply = await stub(m).Resume(deliverability_pb2.ResumeRequest(provider=provider.strip(), by=by),
                                 timeout=m.timeout)
    return {"provider": provider.strip(), "was_paused": reply.was_paused, "by": by}


def _obj(value: JsonValue) -> JsonObject:
    return value if isinstance(value, dict) else {}


def _list(value: JsonValue) -> list[JsonValue]:
    return value if isinstance(value, list) else []


def _events(body: JsonValue) -> tuple[list[deliverability_pb2.DeliveryEvent], str]:
    """Our shape ({"events": [{message_id, recipient, kind, detail}]}), a SendGrid-like list of events
    (custom argument `nurture_message_id`), or an SES-like notification (Bounce or Complaint, our
    X-Nurture-Message header among `mail.headers`)."""
    problems: dict[str, str] = {}
    out: list[deliverability_pb2.DeliveryEvent] = []
    if isinstance(body, dict) and isinstance(body.get("events"), list):
        source, items = "webhook", body["events"]
        for i, e in enumerate(items):
            if not isinstance(e, dict):
                problems[f"events.{i}"] = "must be an object"
                continue
            out.append(deliverability_pb2.DeliveryEvent(
                message_id=str(e.get("message_id") or ""), recipient=str(e.get("recipient") or ""),
                kind=str(e.get("kind") or ""), detail=str(e.get("detail") or "")[:500]))
    elif isinstance(body, list):
        source = "webhook:sendgrid"
        for i, e in enumerate(body):
            if not isinstance(e, dict) or not isinstance(e.get("event"), str):
                problems[f"{i}"] = "must be an object with an event"
                continue
            kind = SENDGRID.get(e["event"])
            if kind is None:
                continue
            if e["event"] == "bounce" and str(e.get("status", "5"))[:1] == "4":
                kind = "soft_bounce"
            out.append(deliverability_pb2.DeliveryEvent(
                message_id=str(e.get("nurture_message_id") or ""), recipient=str(e.get("email") or ""), kind=kind,
                detail=str(e.get("reason") or e.get("status") or "")[:500]))
    elif isinstance(body, dict) and body.get("notificationType") in ("Bounce", "Complaint"):
        source = "webhook:ses"
        headers = _obj(body.get("mail")).get("headers") or []
        mid = next((str(h.get("value")) for h in _list(headers) if isinstance(h, dict)
                    and str(h.get("name", "")).lower() == "x-nurture-message"), "")
        if body["notificationType"] == "Bounce":
            bounce = _obj(body.get("bounce"))
            kind = "hard_bounce" if bounce.get("bounceType") == "Permanent" else "soft_bounce"
            for r in _list(bounce.get("bouncedRecipients")):
                if isinstance(r, dict):
                    out.append(deliverability_pb2.DeliveryEvent(
                        message_id=mid, recipient=str(r.get("emailAddress") or ""), kind=kind,
                        detail=str(r.get("diagnosticCode") or r.get("status") or "")[:500]))
        else:
            complaint = _obj(body.get("complaint"))
            for r in _list(complaint.get("complainedRecipients")):
                if isinstance(r, dict):
                    out.append(deliverability_pb2.DeliveryEvent(
                        message_id=mid, recipient=str(r.get("emailAddress") or ""), kind="complaint",
                        detail=str(complaint.get("complaintFeedbackType") or "abuse")[:500]))
    else:
        raise ApiError(422, "invalid", "not a delivery event body we read: {\"events\": [...]}, a SendGrid-like "
                       "list, or an SES-like Bounce or Complaint notification", {"fields": {"body": "unknown shape"}})
    if len(out) > MAX_EVENTS:
        problems["events"] = f"at most {MAX_EVENTS} events a call"
    if problems:
        raise ApiError(422, "invalid", "some events are malformed", {"fields": problems})
    return out, source


@router.post("/events")
async def events(body: JsonValue = Depends(json_body), m: Mesh = Depends(mesh)) -> EventsApplied:
    parsed, source = _events(body)
    reply = await stub(m).ReportEvents(deliverability_pb2.ReportEventsRequest(events=parsed, source=source),
                                       timeout=m.timeout)
    return {"applied": reply.applied, "ignored": list(reply.ignored)}
