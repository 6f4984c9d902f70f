"""The bus message codec (nurture/busmessage.py): every form a stream can hold decodes to the same typed
message, because a rolling deploy has old and new producers (and old outbox rows) on the same streams.

bus_wire/v0_scoring_messages.jsonl holds outbox payloads written by scoring before the contract existed
(lead_created, an event with its score_changed, lead_erased: one per line, captured from the running
code's outbox). bus_wire/v1_envelopes.jsonl holds the same messages as version-1 envelopes, written by
`encode` when version 1 was introduced. Never regenerate either file: they are what older producers
put on the wire.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from nurture import busmessage
from nurture.api.bus.v1 import bus_pb2
from nurture.busmessage import BusMessage, LeadSnapshot, MalformedMessage, RuleHit

WIRE = Path(__file__).with_name("bus_wire")
V0 = (WIRE / "v0_scoring_messages.jsonl").read_text().splitlines()
V1 = (WIRE / "v1_envelopes.jsonl").read_text().splitlines()


def test_the_fixtures_hold_every_kind_of_message_scoring_wrote() -> None:
    types = [json.loads(line)["type"] for line in V0]
    assert types == ["lead_created", "page_viewed", "score_changed", "lead_erased"]
    assert len(V1) == len(V0)


@pytest.mark.parametrize("line", V0, ids=[json.loads(x)["type"] for x in V0])
def test_a_version_0_json_message_decodes_to_every_value_it_held(line: str) -> None:
    old: dict[str, Any] = json.loads(line)
    m = busmessage.decode(line.encode())  # the stream hands bytes
    assert (m.id, m.lead_id, m.type) == (old["id"], old["lead_id"], old["type"])
    assert m.properties == old["properties"]
    assert m.occurred_at == old["occurred_at"]
    assert m.score_delta == old["score_delta"]
    assert [(r.rule, r.points, r.why) for r in m.rules] == [(r["rule"], r["points"], r["why"]) for r in old["rules"]]
    assert list(m.signals) == old["signals"]
    assert m.source == old.get("source")
    assert m.lead is not None
    # What consumers keep of the snapshot answers every key the old dict had with the same value.
    kept = m.lead.as_dict()
    assert {k: kept[k] for k in old["lead"]} == old["lead"]


def test_the_typed_fields_of_an_event_message() -> None:
    m = busmessage.decode(V0[1])
    assert m.lead is not None
    assert (m.type, m.score_delta, m.signals, m.source) == ("page_viewed", 8, ("pricing_interest",), "api")
    assert m.rules[0].rule == "pricing_page" and m.rules[0].points == 8
    assert (m.lead.score, m.lead.version, m.lead.email, m.lead.segment) == (8, 2, "ana@example.com", None)
    assert m.lead.consent == {"email": True} and m.lead.counters["pricing_views"] == 1
    assert m.lead.created_at is None  # an event's snapshot never carried the lead's timestamps


def test_an_erased_leads_snapshot_is_only_its_id() -> None:
    m = busmessage.decode(V0[3])
    assert m.type == "lead_erased" and m.lead == LeadSnapshot(id="lead-1")
    assert m.lead.email is None and m.lead.consent == {} and m.lead.score is None


@pytest.mark.parametrize("n", range(len(V0)))
def test_a_version_1_envelope_decodes_to_the_same_message_as_its_json_form(n: int) -> None:
    assert busmessage.decode(V1[n]) == busmessage.decode(V0[n])
    assert busmessage.decode(V1[n].encode()) == busmessage.decode(V0[n])


@pytest.mark.parametrize("n", range(len(V0)))
def test_what_encode_writes_is_the_proto_envelope_and_decodes_to_what_it_was_given(n: int) -> None:
    m = busmessage.decode(V0[n])
    text = busmessage.encode(m)
    assert busmessage.decode(text) == m
    # The contract's own parser reads it, refusing any field the proto does not define.
    envelope = json_format.Parse(text, bus_pb2.Envelope())
    assert envelope.version == busmessage.VERSION and envelope.message.id == m.id
    assert envelope.message.lead.id == m.lead_id and list(envelope.message.signals) == list(m.signals)


def test_an_envelope_written_by_another_proto3_json_writer_decodes() -> None:
    # What a producer in another language would send: integers as strings, unset fields left out.
    envelope = json_format.Parse(V1[1], bus_pb2.Envelope())
    text = json_format.MessageToJson(envelope, preserving_proto_field_name=True)
    assert '"score": "8"' in text
    m = busmessage.decode(text)
    assert m.lead is not None and (m.lead.score, m.lead.version, m.score_delta) == (8, 2, 8)
    assert (m.id, m.type, m.signals, m.rules) == (busmessage.decode(V0[1]).id, "page_viewed", ("pricing_interest",),
                                                  busmessage.decode(V0[1]).rules)


def test_a_newer_envelope_with_fields_this_code_does_not_know_still_decodes() -> None:
    # A producer one release ahead: a higher version and a field added to the message and the lead.
    newer = json.loads(V1[1])
    newer["version"] = busmessage.VERSION + 1
    newer["message"]["priority"] = "high"
    newer["message"]["lead"]["lead_score_model"] = 7
    assert busmessage.decode(json.dumps(newer)) == busmessage.decode(V0[1])


def test_nulls_empties_and_defaults_survive_the_wire() -> None:
    m = BusMessage(id="x:1", lead_id="l", type="lead_updated", properties={"changed": [], "n": 2**40, "f": 1.5},
                   occurred_at=None, lead=LeadSnapshot(id="l", email="", score=0, version=0, first_name=None),
                   score_delta=-3, rules=(RuleHit("decay", -3, "quiet"),), signals=(), source="")
    back = busmessage.decode(busmessage.encode(m))
    assert back == m
    assert back.lead is not None and back.lead.email == "" and back.lead.first_name is None
    assert back.lead.score == 0 and back.lead.version == 0 and back.source == ""
    assert busmessage.decode(busmessage.encode(BusMessage(id="a", lead_id="b", type="t"))).lead is None


def test_as_dict_is_the_version_0_shape() -> None:
    for line in V0:
        old = json.loads(line)
        new = busmessage.decode(line).as_dict()
        assert {k: new[k] for k in old if k != "lead"} == {k: v for k, v in old.items() if k != "lead"}
        assert BusMessage.from_dict(new) == busmessage.decode(line)


def test_values_json_cannot_hold_natively_take_the_slow_path() -> None:
    m = BusMessage(id="big", lead_id="l", type="form_submitted", properties={"n": 2**70})
    assert busmessage.decode(busmessage.encode(m)).properties == {"n": 2**70}


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1, 2]", b"not a message", b'"text"',
                                 b'{"version": 1}', b'{"version": 0, "message": {"id": "x"}}',
                                 b'{"version": "1", "message": {"id": "x"}}',
                                 b'{"version": 1, "message": {"id": "x", "lead": {"id": "l", "score": "high"}}}',
                                 b'{"id": "x", "score_delta": "much"}'])
def test_what_is_no_message_raises_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedMessage):
        busmessage.decode(raw)
