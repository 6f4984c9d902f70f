"""What crosses scoring's module boundaries: the event going in, the result coming out, the outbox row
as published, and the errors the servicer maps to status codes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

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


@dataclass(frozen=True)
class EventResult:
    event_id: str = ""
    duplicate: bool = False
    error_code: str = ""
    error_message: str = ""
