"""The bus adapter reads a decoded bus message as it reads the message's JSON object, and a fact's record
body (`analytics_facts.body`, what a rebuild folds again) reads back as the same fact."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from nurture.busmessage import BusMessage, decode, encode
from services.analytics.domain.facts import Fact, from_bus
from services.analytics.storage import _decode, _encode
from tests.bus_messages import bus_message

LEAD = {"id": "L1", "segment": "family", "score": 0, "created_at": "2026-03-01T00:00:00Z"}
EMAIL = {"message_id": "m1", "journey": "family", "stage": "welcome", "template": "family.email_01",
         "topic": "schools", "format": "guide", "provider": "gmail", "sending_domain": "b.example"}
CASES = [
    ("email_sent", EMAIL, LEAD), ("email_opened", EMAIL, {**LEAD, "score": 12}),
    ("email_hard_bounced", {**EMAIL, "bounce": "soft"}, LEAD), ("email_soft_bounced", EMAIL, LEAD),
    ("spam_reported", EMAIL, LEAD), ("spam_reported", {}, LEAD), ("unsubscribed", {}, {**LEAD, "segment": None}),
    ("stage_changed", {"old": "lead", "new": "mql"}, LEAD),
    ("score_changed", {"old": 3, "new": 7}, {**LEAD, "score": 7}),
    ("score_changed", {"old": 3, "new": 7}, {**LEAD, "score": None}),
    ("opportunity_won", {"amount": "4800"}, {**LEAD, "score": 55}), ("page_viewed", {"url": "/"}, LEAD),
    ("email_clicked", EMAIL, None),
]


@pytest.mark.parametrize(("etype", "props", "lead"), CASES)
def test_a_decoded_bus_message_gives_the_fact_its_json_object_gives(etype: str, props: dict[str, object],
                                                                    lead: dict[str, object] | None) -> None:
    message = bus_message("e1", "L1", etype, properties=props, lead=lead, occurred_at="2026-03-02T08:00:00Z")
    as_json = {"id": "e1", "lead_id": "L1", "type": etype, "properties": props, "lead": lead,
               "occurred_at": "2026-03-02T08:00:00Z"}
    from_message = from_bus(decode(encode(message)))
    assert from_message == from_bus(as_json)
    if etype in ("page_viewed",) or (etype == "spam_reported" and not props) or lead == {**LEAD, "score": None}:
        assert from_message is None
    else:
        assert from_message is not None and from_message.lead_id == "L1"


def test_a_message_without_a_lead_id_is_its_snapshots_lead() -> None:
    message = BusMessage(id="e1", lead_id="", type="email_sent", properties=dict(EMAIL),
                         occurred_at="2026-03-02T08:00:00Z", lead=None)
    assert from_bus(message) is None  # no lead anywhere: no fact
    with_snapshot = decode(encode(bus_message("e1", None, "email_sent", properties=EMAIL, lead=LEAD,
                                              occurred_at="2026-03-02T08:00:00Z")))
    fact = from_bus(with_snapshot)
    assert fact is not None and fact.lead_id == "L1"


# 1.7e308 is finite, but two of them sum to infinity: every revenue report over their days answered 500.
@pytest.mark.parametrize("amount", ["nan", "inf", "-inf", float("nan"), "-5", "abc", 1.7e308, "1e300", 2.0**53])
def test_a_won_amount_that_is_no_finite_positive_number_is_no_revenue(amount: object) -> None:
    fact = from_bus({"id": "e2", "lead_id": "L1", "type": "opportunity_won", "occurred_at": "2026-03-03T08:00:00Z",
                     "lead": LEAD, "properties": {"amount": amount}})
    assert fact is not None and fact.amount == 0.0
    assert _decode(_encode(fact)) == fact


def test_a_won_amount_up_to_the_safe_integers_is_revenue() -> None:
    fact = from_bus({"id": "e2", "lead_id": "L1", "type": "opportunity_won", "occurred_at": "2026-03-03T08:00:00Z",
                     "lead": LEAD, "properties": {"amount": 2**53 - 1}})
    assert fact is not None and fact.amount == 2**53 - 1


def test_a_facts_record_body_reads_back_as_the_same_fact() -> None:
    at = datetime(2026, 3, 2, 8, 0, 0, 123456, tzinfo=UTC)
    facts = [
        Fact(id="e1", kind="sent", lead_id="L1", at=at, segment="família", message_id="m1", journey="j",
             stage="welcome", template="t", channel="email", topic="x", format="guide", score=0,
             domain="b.example", provider="gmail"),
        Fact(id="e2:stage", kind="stage", lead_id="L1", at=at, stage="mql", previous="lead",
             since=datetime(2026, 3, 1, tzinfo=UTC)),
        Fact(id="e3", kind="won", lead_id="L1", at=at, amount=4800.5, score=None),
        Fact(id="e4", kind="bounced", lead_id="L1", at=at, bounce="hard", score=-3),
    ]
    for fact in facts:
        body = _encode(fact)
        assert _decode(body) == fact
        assert "score" in body or fact.score is None  # a score of 0 is kept, not dropped as a default
    assert '"amount"' not in _encode(facts[0]) and '"since"' not in _encode(facts[0])  # defaults are left out
    assert math.isclose(_decode(_encode(facts[2])).amount, 4800.5)


def test_a_won_deal_counts_its_revenue_in_the_one_currency_not_its_amount() -> None:
    # crm_sync's deal carries `revenue` (its amount converted to sync.yaml's currency) beside the CRM's own
    # amount and currency: a 100 EUR deal was counted as 100 beside USD ones. Without it, the amount counts.
    won = {"id": "e3", "lead_id": "L1", "type": "opportunity_won", "occurred_at": "2026-03-03T08:00:00Z", "lead": LEAD}
    fact = from_bus({**won, "properties": {"amount": 100, "currency": "EUR", "revenue": 108.0,
                                           "revenue_currency": "USD"}})
    assert fact is not None and fact.amount == 108.0
    fact = from_bus({**won, "properties": {"amount": 100}})
    assert fact is not None and fact.amount == 100.0
