"""The bus message as typed records, and its one encoder and decoder.

The contract is `protos/nurture/api/bus/v1/bus.proto`. Producers build a `BusMessage` and `encode` it;
`nurture.bus.Consumer` hands its handler `BusMessage`s from `decode`; nothing else reads or writes the
wire. The text `encode` returns is what scoring's outbox row holds and what the stream entry's field `m`
holds: base64 of a protobuf `Envelope` (the outbox column is text, and one form in both places means
the publisher copies it through untouched).

`decode` also reads every older form, because a rolling deploy has old and new producers writing the
same streams and a crash leaves old rows in the outbox:
- version 0: the JSON object scoring wrote before this contract (text starting with `{`);
- version 1: the first protobuf envelope.
A newer envelope decodes too: protobuf skips fields it does not know.

Free-form objects (event properties, lead attributes, consent, counters, interests) are JSON text inside
the protobuf (their keys are open-ended, and Struct would make every integer a double); they are decoded
here, once, into plain dicts.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from nurture import jsoncodec
from nurture.api.bus.v1 import bus_pb2

# The envelope version this code writes. Raise it when a field changes meaning (adding a field does not
# need it: readers of the older version ignore it, readers of the newer one see its default).
VERSION = 1


class MalformedMessage(ValueError):
    """A stream entry that is neither an envelope nor a version-0 JSON message."""


@dataclass(frozen=True, slots=True)
class RuleHit:
    """A scoring rule that fired for the message's event: its points and the reason shown to people."""

    rule: str
    points: int
    why: str


@dataclass(frozen=True, slots=True)
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
    attributes: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)
    score: int | None = None
    grade: str | None = None
    lifecycle_stage: str | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    interests: dict[str, Any] = field(default_factory=dict)
    crm_id: str | None = None
    version: int | None = None
    created_at: str | None = None
    updated_at: str | None = None
    last_engaged_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as the JSON object consumers keep (journeys' lead state, crm_sync's snapshot
        column) and feed to rules as facts: every field, None where unknown."""
        return {f: getattr(self, f) for f in _SNAPSHOT_FIELDS}

    @classmethod
    def from_dict(cls, lead: Mapping[str, Any]) -> LeadSnapshot:
        """A snapshot from its JSON object (a version-0 message's `lead`, or one a consumer stored)."""
        values: dict[str, Any] = {}
        for name in _SNAPSHOT_FIELDS:
            value = lead.get(name)
            if name in _OBJECT_FIELDS:
                values[name] = dict(value) if isinstance(value, Mapping) else {}
            elif value is None:
                values[name] = None
            elif name in _INT_FIELDS:
                values[name] = int(value)
            else:
                values[name] = str(value)
        values["id"] = values["id"] or ""
        return cls(**values)


@dataclass(frozen=True, slots=True)
class BusMessage:
    """One bus message: a scored event (its own type) or a lead change scoring announces
    (`lead_created`, `lead_updated`, `lead_erased`, `score_changed`, `stage_changed`,
    `engagement_lapsed`). Consumers are idempotent by `id`."""

    id: str
    lead_id: str
    type: str
    properties: dict[str, Any] = field(default_factory=dict)
    occurred_at: str | None = None
    lead: LeadSnapshot | None = None
    score_delta: int = 0
    rules: tuple[RuleHit, ...] = ()
    signals: tuple[str, ...] = ()
    source: str | None = None  # the event's source (api, crm:..., messaging); None on lead changes

    def as_dict(self) -> dict[str, Any]:
        """The message as a JSON object (dead letters, logs, version-0 readers)."""
        out: dict[str, Any] = {
            "id": self.id, "lead_id": self.lead_id, "type": self.type, "properties": self.properties,
            "occurred_at": self.occurred_at, "lead": self.lead.as_dict() if self.lead is not None else None,
            "score_delta": self.score_delta, "rules": [dataclasses.asdict(r) for r in self.rules],
            "signals": list(self.signals),
        }
        if self.source is not None:
            out["source"] = self.source
        return out

    @classmethod
    def from_dict(cls, m: Mapping[str, Any]) -> BusMessage:
        """A message from its version-0 JSON object."""
        lead = m.get("lead")
        props = m.get("properties")
        occurred = m.get("occurred_at")
        source = m.get("source")
        return cls(
            id=str(m.get("id") or ""),
            lead_id=str(m.get("lead_id") or (lead.get("id") if isinstance(lead, Mapping) else "") or ""),
            type=str(m.get("type") or ""),
            properties=dict(props) if isinstance(props, Mapping) else {},
            occurred_at=str(occurred) if occurred is not None else None,
            lead=LeadSnapshot.from_dict(lead) if isinstance(lead, Mapping) and lead else None,
            score_delta=int(m.get("score_delta") or 0),
            rules=tuple(RuleHit(rule=str(r.get("rule") or ""), points=int(r.get("points") or 0),
                                why=str(r.get("why") or ""))
                        for r in m.get("rules") or () if isinstance(r, Mapping)),
            signals=tuple(str(s) for s in m.get("signals") or ()),
            source=str(source) if source is not None else None,
        )


_SNAPSHOT_FIELDS = tuple(f.name for f in dataclasses.fields(LeadSnapshot))
_OBJECT_FIELDS = frozenset({"attributes", "consent", "counters", "interests"})
_INT_FIELDS = frozenset({"score", "version"})
_STRING_FIELDS = tuple(f for f in _SNAPSHOT_FIELDS if f not in _OBJECT_FIELDS and f not in _INT_FIELDS and f != "id")


def _json(value: Mapping[str, Any] | Sequence[Any]) -> str:
    return jsoncodec.dumps(value, default=str)


def _snapshot_pb(lead: LeadSnapshot) -> bus_pb2.LeadSnapshot:
    pb = bus_pb2.LeadSnapshot(id=lead.id)
    for name in _STRING_FIELDS:
        value = getattr(lead, name)
        if value is not None:
            setattr(pb, name, value)
    if lead.score is not None:
        pb.score = lead.score
    if lead.version is not None:
        pb.version = lead.version
    # Empty objects are not sent: an erased lead's snapshot stays as small as its id.
    if lead.attributes:
        pb.attributes_json = _json(lead.attributes)
    if lead.consent:
        pb.consent_json = _json(lead.consent)
    if lead.counters:
        pb.counters_json = _json(lead.counters)
    if lead.interests:
        pb.interests_json = _json(lead.interests)
    return pb


def encode(message: BusMessage) -> str:
    """The message's wire text (outbox row and stream field `m`): base64 of a version-1 envelope."""
    pb = bus_pb2.BusMessage(id=message.id, lead_id=message.lead_id, type=message.type,
                            score_delta=message.score_delta, signals=message.signals)
    if message.properties:
        pb.properties_json = _json(message.properties)
    if message.occurred_at is not None:
        pb.occurred_at = message.occurred_at
    if message.lead is not None:
        pb.lead.CopyFrom(_snapshot_pb(message.lead))
    for r in message.rules:
        pb.rules.add(rule=r.rule, points=r.points, why=r.why)
    if message.source is not None:
        pb.source = message.source
    envelope = bus_pb2.Envelope(version=VERSION, message=pb)
    return base64.b64encode(envelope.SerializeToString()).decode("ascii")


def _object(text: str) -> dict[str, Any]:
    value = jsoncodec.loads(text) if text else {}
    return value if isinstance(value, dict) else {}


def _snapshot(pb: bus_pb2.LeadSnapshot) -> LeadSnapshot:
    has = pb.HasField
    return LeadSnapshot(
        id=pb.id,
        **{name: getattr(pb, name) if has(name) else None for name in _STRING_FIELDS},
        score=pb.score if has("score") else None,
        version=pb.version if has("version") else None,
        attributes=_object(pb.attributes_json), consent=_object(pb.consent_json),
        counters=_object(pb.counters_json), interests=_object(pb.interests_json),
    )


def _message(pb: bus_pb2.BusMessage) -> BusMessage:
    return BusMessage(
        id=pb.id, lead_id=pb.lead_id, type=pb.type, properties=_object(pb.properties_json),
        occurred_at=pb.occurred_at if pb.HasField("occurred_at") else None,
        lead=_snapshot(pb.lead) if pb.HasField("lead") else None,
        score_delta=pb.score_delta,
        rules=tuple(RuleHit(rule=r.rule, points=r.points, why=r.why) for r in pb.rules),
        signals=tuple(pb.signals),
        source=pb.source if pb.HasField("source") else None,
    )


def decode(raw: bytes | str) -> BusMessage:
    """The message in a stream entry's field `m` (or an outbox row), whatever version wrote it.
    Raises MalformedMessage when it is none of them."""
    head = raw[:1]
    try:
        if head in (b"{", "{"):  # version 0: the JSON object written before the envelope
            value = jsoncodec.loads(raw)
            if not isinstance(value, dict):
                raise MalformedMessage("a version-0 message is a JSON object")
            return BusMessage.from_dict(value)
        envelope = bus_pb2.Envelope.FromString(base64.b64decode(raw, validate=True))
        if envelope.version < 1 or not envelope.HasField("message"):
            raise MalformedMessage(f"envelope version {envelope.version} without a message")
        return _message(envelope.message)
    except MalformedMessage:
        raise
    except (ValueError, TypeError, AttributeError, DecodeError, binascii.Error) as exc:
        raise MalformedMessage(f"{type(exc).__name__}: {exc}") from exc
