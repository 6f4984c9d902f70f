"""The bus message as typed records, and its one encoder and decoder.

The contract is `protos/nurture/api/bus/v1/bus.proto`. Producers build a `BusMessage` and `encode` it;
`nurture.bus.Consumer` hands its handler `BusMessage`s from `decode`; nothing else reads or writes the
wire. The text `encode` returns is what scoring's outbox row holds and what the stream entry's field `m`
holds: the proto3 JSON form of an `Envelope` (field names as in the proto), written by orjson straight
from the records, because the accept path encodes every message and the protobuf runtime costs about ten
times as much here.

`decode` also reads every older form, because a rolling deploy has old and new producers writing the
same streams and a crash leaves old rows in the outbox:
- version 0: the JSON object scoring wrote before this contract (the message's fields at the top);
- version 1: the first envelope, `{"version": 1, "message": {...}}`.
A newer envelope decodes too: fields this code does not know are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from nurture import jsoncodec
from nurture.jsontypes import JsonMapping, JsonObject, JsonValue

# The envelope version this code writes. Raise it when a field changes meaning (adding a field does not
# need it: readers of the older version ignore it, readers of the newer one see its default).
VERSION = 1


class MalformedMessage(ValueError):
    """A stream entry that is neither an envelope nor a version-0 JSON message."""


# Plain dataclasses, neither frozen nor slotted: scoring builds them for every message on the accept
# path, where frozen doubles the cost of construction and slots make orjson serialise them several
# times slower (measured, docs/CONTRACTS.md). Treat them as values: nothing changes one once built.


@dataclass
class RuleHit:
    """A scoring rule that fired for the message's event: its points and the reason shown to people."""

    rule: str
    points: int
    why: str


@dataclass
class LeadSnapshot:
    """The lead as scoring holds it after the message, as every consumer reads it. Fields scoring did not
    send are None (a `lead_erased` snapshot carries only `id`); objects are empty dicts then."""

    id: str
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    segment: str | None = None
    timezone: str | None = None
    locale: str | None = None
    attributes: JsonObject = field(default_factory=dict)
    consent: JsonObject = field(default_factory=dict)
    score: int | None = None
    grade: str | None = None
    lifecycle_stage: str | None = None
    counters: JsonObject = field(default_factory=dict)
    interests: JsonObject = field(default_factory=dict)
    crm_id: str | None = None
    version: int | None = None
    created_at: str | None = None
    updated_at: str | None = None
    last_engaged_at: str | None = None

    def as_dict(self) -> JsonObject:
        """The snapshot as the JSON object consumers keep (journeys' lead state, crm_sync's snapshot
        column) and feed to rules as facts: every field, None where unknown."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, lead: JsonMapping) -> LeadSnapshot:
        """A snapshot from its JSON object (a message's `lead`, or one a consumer stored); fields it does
        not know are ignored."""
        get = lead.get
        return cls(
            id=_text(get("id")) or "", email=_text(get("email")), first_name=_text(get("first_name")),
            last_name=_text(get("last_name")), segment=_text(get("segment")), timezone=_text(get("timezone")),
            locale=_text(get("locale")), attributes=_object(get("attributes")), consent=_object(get("consent")),
            score=_int(get("score")), grade=_text(get("grade")), lifecycle_stage=_text(get("lifecycle_stage")),
            counters=_object(get("counters")), interests=_object(get("interests")), crm_id=_text(get("crm_id")),
            version=_int(get("version")), created_at=_text(get("created_at")), updated_at=_text(get("updated_at")),
            last_engaged_at=_text(get("last_engaged_at")),
        )


@dataclass
class BusMessage:
    """One bus message: a scored event (its own type) or a lead change scoring announces
    (`lead_created`, `lead_updated`, `lead_erased`, `score_changed`, `stage_changed`,
    `engagement_lapsed`). Consumers are idempotent by `id`."""

    id: str
    lead_id: str
    type: str
    properties: JsonObject = field(default_factory=dict)
    occurred_at: str | None = None
    lead: LeadSnapshot | None = None
    score_delta: int = 0
    rules: tuple[RuleHit, ...] = ()
    signals: tuple[str, ...] = ()
    source: str | None = None  # the event's source (api, crm:..., messaging); None on lead changes

    def as_dict(self) -> JsonObject:
        """The message as a JSON object (dead letters, logs)."""
        out = dict(self.__dict__)
        out.update(lead=self.lead.as_dict() if self.lead is not None else None,
                   rules=[dict(r.__dict__) for r in self.rules], signals=list(self.signals))
        return out

    @classmethod
    def from_dict(cls, m: JsonMapping) -> BusMessage:
        """A message from its JSON object: a version-0 message, or the `message` of an envelope (where
        a proto3 JSON writer may have put an integer as a string); fields it does not know are ignored."""
        get = m.get
        lead = get("lead")
        snapshot = LeadSnapshot.from_dict(lead) if isinstance(lead, Mapping) and lead else None
        rules = get("rules") or ()
        signals = get("signals") or ()
        return cls(
            id=_text(get("id")) or "",
            lead_id=_text(get("lead_id")) or (snapshot.id if snapshot is not None else ""),
            type=_text(get("type")) or "",
            properties=_object(get("properties")),
            occurred_at=_text(get("occurred_at")),
            lead=snapshot,
            score_delta=_int(get("score_delta")) or 0,
            rules=tuple(RuleHit(rule=_text(r.get("rule")) or "", points=_int(r.get("points")) or 0,
                                why=_text(r.get("why")) or "") for r in rules if isinstance(r, Mapping)),
            signals=tuple(x if type(x) is str else str(x) for x in signals),
            source=_text(get("source")),
        )


def _text(value: JsonValue) -> str | None:
    return value if value is None or type(value) is str else str(value)


def _int(value: JsonValue) -> int | None:
    return value if value is None or type(value) is int else int(value)


def _object(value: JsonValue) -> JsonObject:
    # Decoded JSON is the message's own: a dict is taken as it is, anything else that is not an object reads {}.
    if type(value) is dict:
        return value
    return dict(value) if isinstance(value, Mapping) else {}


# As `nurture.jsoncodec` writes JSON (datetimes as str(), as they always were on the bus), except that
# the records themselves are serialised natively (orjson reads a dataclass's fields in C).
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME


def encode(message: BusMessage) -> str:
    """The message's wire text (outbox row and stream field `m`): a version-1 envelope."""
    envelope = {"version": VERSION, "message": message}
    try:
        return orjson.dumps(envelope, default=str, option=_OPTIONS).decode()
    except TypeError:  # a >64-bit integer or a non-str key in a free-form object: the slow path
        return json.dumps({"version": VERSION, "message": message.as_dict()}, separators=(",", ":"), default=str)


def decode(raw: bytes | str) -> BusMessage:
    """The message in a stream entry's field `m` (or an outbox row), whatever version wrote it.
    Raises MalformedMessage when it is none of them."""
    try:
        value = jsoncodec.loads(raw)
        if not isinstance(value, dict):
            raise MalformedMessage("a bus message is a JSON object")
        if "version" not in value:  # version 0: the message itself
            return BusMessage.from_dict(value)
        version, inner = value["version"], value.get("message")
        if not isinstance(version, int) or version < 1 or not isinstance(inner, dict):
            raise MalformedMessage(f"an envelope of version {version!r} without a message")
        return BusMessage.from_dict(inner)
    except MalformedMessage:
        raise
    except (ValueError, TypeError, AttributeError) as exc:
        raise MalformedMessage(f"{type(exc).__name__}: {exc}") from exc
