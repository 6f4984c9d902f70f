"""What crosses scoring's module boundaries: the event going in, the result coming out, the outbox row
as published, and the errors the servicer maps to status codes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, NotRequired, TypedDict

from nurture.busmessage import LeadSnapshot
from nurture.jsontypes import JsonMapping, JsonObject


class InvalidInput(ValueError):
    """Input that is well-formed but wrong; `problems` maps a field to what is wrong with it."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.problems = problems


class NotFound(LookupError):
    pass


class EmailTaken(ValueError):
    """The email belongs to another lead: one person is one lead (HubSpot refuses such a contact the
    same way), or every journey would write to them twice."""

    def __init__(self, email: str, lead_id: str) -> None:
        # The message names neither lead: it reaches API callers (a 409), the other id stays internal.
        super().__init__("this email belongs to another lead")
        self.lead_id = lead_id


class Stale(Exception):  # noqa: N818 (an outcome, as NotFound is)
    """The upsert copies a source record's modification older than one already applied to the lead
    (`LeadUpsert.source_modified_at`): nothing written; `lead` is the lead as it stands."""

    def __init__(self, lead: LeadSnapshot) -> None:
        super().__init__("a later modification of this source record was applied")
        self.lead = lead


class ScoredProfile(TypedDict):
    """What the scoring model reads of a profile and a scored event changes in it (in place): a lead's
    (`LeadRecord`) or an anonymous visitor's (`VisitorProfile`). A dict, not a dataclass: the visitor's
    is stored as this JSON object, and the ingest path builds and updates one per lead per batch."""

    id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    segment: str | None
    score: int
    grade: str
    lifecycle_stage: str
    version: int
    attributes: JsonObject
    consent: JsonObject
    counters: JsonObject  # engagement figures (public) and the model's bookkeeping (totals, fired_today)
    recent: dict[str, list[int]]  # event kind → recent epoch seconds
    interests: dict[str, list[str]]  # countries, topics
    last_engaged_at: datetime | None
    # Email consent changes an applied event made (True: given), for the audit; taken off before saving.
    _consent_changes: NotRequired[list[bool]]


class LeadRecord(ScoredProfile):
    """A lead's row with its JSON decoded (storage.internal): what ingest scores and saves."""

    timezone: str | None
    locale: str | None
    crm_id: str | None
    lapse_due_at: datetime | None
    # On every bus message's snapshot: analytics times a lead's first lifecycle change from it.
    created_at: NotRequired[datetime | None]


class VisitorProfile(ScoredProfile):
    """An anonymous visitor's profile (scoring_visitors.profile): a lead's scored fields, no email
    and nobody's consent until it is identified."""

    anonymous: bool


@dataclass(frozen=True)
class EventIn:
    lead_id: str
    type: str
    properties: JsonObject
    occurred_at: datetime | None
    idempotency_key: str | None
    source: str
    trace: str | None = None  # the W3C traceparent of the request that sent this event


class OutboxRow(NamedTuple):
    """An outbox row as published."""

    seq: int
    lead_id: str
    payload: str  # the bus message's JSON (nurture.busmessage)
    trace: str | None  # the trace carrier's JSON (W3C traceparent), when there is one


@dataclass(frozen=True)
class LeadUpsert:
    """One lead of a batch upsert (the UpsertLeads RPC)."""

    lead_id: str
    fields: JsonMapping
    merge: bool
    source: str
    must_exist: bool
    # The source record this upsert copies (e.g. "<crm>:<contact id>") and when the source modified
    # it: an older modification than the lead's last applied one of the same record is Stale.
    source_record: str = ""
    source_modified_at: datetime | None = None


@dataclass(frozen=True)
class EventResult:
    event_id: str = ""
    duplicate: bool = False
    error_code: str = ""
    error_message: str = ""
