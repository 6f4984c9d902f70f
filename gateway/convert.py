"""Proto messages to the API's JSON shapes, and the API's input checks shared by routers."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Required, cast

from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.deps import ApiError
from gateway.shapes import TypedDict
from nurture import limits, times
from nurture.api.journeys.v1 import journeys_pb2
from nurture.api.scoring.v1 import scoring_pb2
from nurture.jsontypes import JsonObject, JsonValue


class Enrollment(TypedDict, total=False):
    """A lead's journey: proto3's JSON mapping of journeys' Enrollment (a field at its default, such
    as an empty outcome, is left out), with `next_step_at` always present (null: nothing scheduled)."""

    journey: str
    version: int
    stage: str
    step: str
    status: str
    next_step_at: Required[str | None]
    entered_at: str
    instance: str
    outcome: str


class VersionInfo(TypedDict):
    """One stored version of a journey's definition."""

    version: int
    status: str
    created_at: str | None
    published_at: str | None


class Validated(TypedDict):
    """A journey or template checked with validate_only: valid (a problem is a 422 instead), nothing stored."""

    key: str
    valid: bool
    problems: list[str]


class DraftStored(TypedDict):
    """A journey's or template's new draft version (201, with its Location)."""

    key: str
    version: int
    status: str   # draft


class Lead(TypedDict):
    """A lead as the API shows it (docs/API.md "Leads")."""

    id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    segment: str | None
    timezone: str | None
    locale: str | None
    attributes: JsonValue  # the lead's custom fields: free-form (a placeholder when unreadable)
    consent: JsonValue     # channel → bool, as stored
    score: int
    grade: str
    lifecycle_stage: str
    engagement: JsonObject  # counters by name: data of the scoring model
    interests: JsonValue
    crm_id: str | None
    journeys: list[Enrollment]
    created_at: str | None
    updated_at: str | None
    last_engaged_at: str | None


def iso(ts: Timestamp | None, present: bool = True) -> str | None:
    if ts is None or not present:
        return None
    return times.rfc3339(ts.ToDatetime(tzinfo=UTC))


# An address suppressed in one of these scopes gets no nurture email, whatever the lead's own consent says.
NURTURE_STOPPED_BY = frozenset({"all", "nurture"})


def shown_consent(stored: JsonValue, suppressed: Collection[str] | None) -> JsonValue:
    """The lead's consent as the engine applies it: `email` reads false once the address is suppressed
    from nurture email (an unsubscribe from nurture or all email, a complaint, a hard bounce), where the
    lead's own record (scoring's) keeps the consent a scoped unsubscribe does not withdraw, so that
    transactional mail the lead asked for still goes. `suppressed` None: not known (messaging down)."""
    if isinstance(stored, dict) and stored.get("email") is True and suppressed and NURTURE_STOPPED_BY & set(suppressed):
        return {**stored, "email": False}
    return stored


def enrollment_json(e: journeys_pb2.Enrollment) -> Enrollment:
    item = cast(Enrollment, MessageToDict(e, preserving_proto_field_name=True))
    item["next_step_at"] = iso(e.next_step_at, e.HasField("next_step_at"))
    return item


def lead_json(lead: scoring_pb2.Lead, journeys: list[Enrollment] | None = None,
              suppressed: Collection[str] | None = None) -> Lead:
    """The lead as the API shows it; `suppressed`: the email scopes its address is suppressed in."""
    # Values from a service are read like stored ones: one that cannot be shown degrades, not the read.
    counters: JsonValue = limits.readable(limits.read_json(lead.counters_json, what="counters"), what="counters")
    if not isinstance(counters, dict):
        counters = limits.placeholder("counters")
    interests = counters.pop("interests", {})
    return {
        "id": lead.id,
        "email": lead.email or None,
        "first_name": lead.first_name or None,
        "last_name": lead.last_name or None,
        "segment": lead.segment or None,
        "timezone": lead.timezone or None,
        "locale": lead.locale or None,
        "attributes": limits.readable(limits.read_json(lead.attributes_json, what="attributes"), what="attributes"),
        "consent": shown_consent(limits.readable(limits.read_json(lead.consent_json, what="consent"),
                                                 what="consent"), suppressed),
        "score": lead.score,
        "grade": lead.grade,
        "lifecycle_stage": lead.lifecycle_stage,
        "engagement": counters,
        "interests": interests,
        "crm_id": lead.crm_id or None,
        "journeys": journeys or [],
        "created_at": iso(lead.created_at, lead.HasField("created_at")),
        "updated_at": iso(lead.updated_at, lead.HasField("updated_at")),
        "last_engaged_at": iso(lead.last_engaged_at, lead.HasField("last_engaged_at")),
    }


def parse_time(value: JsonValue, field: str) -> datetime:
    """RFC 3339 with a zone, within the time range of nurture.limits, in UTC; or 422."""
    try:
        return limits.parse_time(value, field)
    except limits.InputError as exc:
        raise ApiError(422, "invalid", str(exc), {"field": field, "fields": exc.problems}) from exc


def parse_bound(value: str, field: str, *, end: bool = False) -> datetime:
    """A report range's `from` (or, with `end`, `to`): RFC 3339 with a zone, or a plain date in UTC,
    a `to` date including its whole day (nurture.limits.parse_bound); or 422. Every report's range
    (analytics, a journey's analytics and its counted leads) is read by this one function."""
    try:
        return limits.parse_bound(value, field, end=end)
    except limits.InputError as exc:
        raise ApiError(422, "invalid", str(exc), {"field": field, "fields": exc.problems}) from exc


def details(text: str) -> JsonValue:
    """A `*_json` field of a service's reply, readable whatever it holds (see lead_json)."""
    return limits.readable(limits.read_json(text, what="details"), what="details")


def require_object(body: JsonValue, what: str = "body") -> JsonObject:
    if not isinstance(body, dict):
        raise ApiError(422, "invalid", f"{what} must be a JSON object")
    return body
