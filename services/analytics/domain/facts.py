"""What analytics hears, as its own typed records, and the ONE adapter from a bus message to them.

`from_bus` is the only function that reads the bus's message shape: when the bus carries a protobuf
contract instead of a dict, this function is the one edit. Everything after it reads `Fact`.

A fact keeps the bus message's id (scoring's event id, or `<event id>:stage` for the lifecycle change
it caused), so a message heard twice (redelivery after a crash, a producer's retry) is one fact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from nurture.busmessage import BusMessage
from nurture.jsontypes import JsonMapping, JsonValue
from nurture.limits import MAX_SAFE_INTEGER

# Bus event types → the fact kind analytics keeps. Anything else changes no report and is skipped.
ENGAGEMENT_KINDS = {
    "email_sent": "sent",
    "email_opened": "opened",
    "email_clicked": "clicked",
    "email_hard_bounced": "bounced",
    "email_bounced": "bounced",
    "unsubscribed": "unsubscribed",
}
# Messaging's deliverability outcomes that are no engagement: a soft bounce (the message is retried) and a
# spam complaint. Only messaging's (they carry the provider) are facts: a `spam_reported` a caller posts
# names no message or provider.
DELIVERABILITY_KINDS = {
    "email_soft_bounced": "soft_bounced",
    "spam_reported": "complaint",
}
WON_EVENT = "opportunity_won"      # crm_sync's event for a deal reported `closed_won` (sync.yaml deal_events)
# crm_sync's event for a won deal reported again with its amount then (a correction in the CRM, or the deal
# reopened and won again): the win stays one, counted at this amount. It names the win's event.
AMOUNT_EVENT = "opportunity_amount_changed"
STAGE_EVENT = "stage_changed"      # scoring's lifecycle change, published beside the event that caused it
SCORE_EVENT = "score_changed"      # scoring's score change, likewise: a lead's score now (score progression)


@dataclass(frozen=True)
class Fact:
    """One thing that happened, with the dimensions every report groups or filters by."""

    id: str
    kind: str            # sent | opened | clicked | bounced | unsubscribed | soft_bounced | complaint | stage | won
    #                      | score | won_amount
    lead_id: str
    at: datetime         # when it happened (the event's occurred_at), UTC
    segment: str = ""    # the lead's segment when it happened
    message_id: str = ""
    journey: str = ""
    stage: str = ""      # the template's journey stage (engagement) or the new lifecycle stage (stage)
    template: str = ""
    channel: str = ""
    topic: str = ""
    format: str = ""
    previous: str = ""   # lifecycle stage before a `stage` fact
    since: datetime | None = None  # a `stage` fact: when the lead was created (dwell of its first stage)
    amount: float = 0.0  # a `won` fact: the deal's amount; a `won_amount` fact: the deal's amount now
    deal: str = ""       # a `won_amount` fact: the id of the `won` fact whose amount it sets
    score: int | None = None  # the lead's score then (the bus snapshot's), when it carried one
    domain: str = ""     # an email's sending domain, as messaging's guards count it
    provider: str = ""   # the recipient's mailbox provider (messaging's deliverability.yaml)
    bounce: str = ""     # a `bounced` fact: hard | soft (a soft bounce at the suppression count)
    entered_by: str = ""  # a send's: the bus message that entered the lead into its journey (its cause)


def parse_time(value: JsonValue) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _text(value: JsonValue) -> str:
    return "" if value is None else str(value)


def from_bus(bus_message: BusMessage | JsonMapping) -> Fact | None:
    """The fact a bus message carries, or None when it changes no report (or is malformed). The consumer
    hands decoded `BusMessage`s, read as they are (turning each into a dict first was a fifth of this
    function's cost); tests and the bench may hand the message's JSON object."""
    if isinstance(bus_message, BusMessage):
        lead = bus_message.lead
        return _fact(bus_message.type, bus_message.id, bus_message.lead_id or (lead.id if lead else ""),
                     bus_message.occurred_at, bus_message.properties, lead.segment if lead else None,
                     lead.score if lead else None, lead.created_at if lead else None)
    message = bus_message
    snapshot = message.get("lead") or {}
    return _fact(message.get("type"), message.get("id"), message.get("lead_id") or snapshot.get("id"),
                 message.get("occurred_at"), message.get("properties") or {}, snapshot.get("segment"),
                 snapshot.get("score"), snapshot.get("created_at"))


def _fact(etype: JsonValue, message_id: JsonValue, lead: JsonValue, occurred_at: JsonValue, props: JsonMapping,
          segment_then: JsonValue, score_then: JsonValue, created_at: JsonValue) -> Fact | None:
    """`from_bus` on the message's fields, however it came: its type, id, lead id, time and properties, and
    its lead snapshot's segment, score and creation time."""
    mid = _text(message_id)
    lead_id = _text(lead)
    at = parse_time(occurred_at)
    if not mid or not lead_id or at is None:
        return None
    segment = _text(segment_then)
    score = score_then if isinstance(score_then, int) and not isinstance(score_then, bool) else None
    if etype in ENGAGEMENT_KINDS or (etype in DELIVERABILITY_KINDS and props.get("provider")):
        kind = ENGAGEMENT_KINDS.get(str(etype)) or DELIVERABILITY_KINDS[str(etype)]
        return Fact(id=mid, kind=kind, lead_id=lead_id, at=at, segment=segment,
                    message_id=_text(props.get("message_id")), journey=_text(props.get("journey")),
                    stage=_text(props.get("stage")), template=_text(props.get("template")),
                    channel=_text(props.get("channel")) or "email", topic=_text(props.get("topic")),
                    format=_text(props.get("format")), score=score, domain=_text(props.get("sending_domain")),
                    provider=_text(props.get("provider")),
                    bounce=_text(props.get("bounce")) if etype in ("email_hard_bounced", "email_bounced") else "",
                    entered_by=_text(props.get("entered_by")) if etype == "email_sent" else "")
    if etype == STAGE_EVENT:
        return Fact(id=mid, kind="stage", lead_id=lead_id, at=at, segment=segment, stage=_text(props.get("new")),
                    previous=_text(props.get("old")), since=parse_time(created_at))
    if etype == SCORE_EVENT:
        if score is None:  # the snapshot (the lead after the change, as on every message) is the score
            return None
        return Fact(id=mid, kind="score", lead_id=lead_id, at=at, segment=segment, score=score)
    if etype == WON_EVENT:
        return Fact(id=mid, kind="won", lead_id=lead_id, at=at, segment=segment, amount=_revenue(props),
                    score=score)
    if etype == AMOUNT_EVENT:
        deal = _text(props.get("won_event_id"))
        if not deal:
            return None
        return Fact(id=mid, kind="won_amount", lead_id=lead_id, at=at, segment=segment, amount=_revenue(props),
                    deal=deal)
    return None


def _revenue(props: JsonMapping) -> float:
    """A won deal's revenue. crm_sync's deal carries `revenue`, its amount in the one currency revenue is
    counted in (sync.yaml), beside the `amount` and `currency` the CRM reported; a won event without it
    (posted through the API, or recorded before) counts its `amount`."""
    try:
        amount = float((props["revenue"] if "revenue" in props else props.get("amount")) or 0)
    except (TypeError, ValueError):
        amount = 0.0
    # An amount that is no finite number (a "nan" or "inf" string) is no revenue either: it would poison
    # every sum it entered, and the facts record's JSON has no form for it. Nor is one past I-JSON's
    # safe integers: two near a double's top (1.7e308) sum to infinity, and every report that adds
    # revenue over their days answered 500 (PostgreSQL's sum refuses with an overflow).
    return max(amount, 0.0) if math.isfinite(amount) and amount <= MAX_SAFE_INTEGER else 0.0
