"""The canonical events' properties are checked at the door (gateway/data/events.yaml), through the gateway
and a real scoring service: this run's find was a webinar registration without `starts_at`, an unsubscribe
of scope "everything" and an assessment score of "high" all answered 202 and then did nothing or something
else than asked (no reminders; every journey exited as if unsubscribed from all mail)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from gateway.routes.events import event_properties
from nurture.service import Running

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": "Bearer test-key"}


@pytest.mark.parametrize(("event", "field", "why"), [
    ({"type": "webinar_registered", "properties": {"webinar_id": "w1"}}, "properties.starts_at", "is required"),
    ({"type": "webinar_registered", "properties": {"webinar_id": ["w1"], "starts_at": "2026-01-10T10:00:00Z"}},
     "properties.webinar_id", "must be a string"),
    # The webinar sequence is one enrolment per webinar_id: without one it was taken (202) and started
    # nothing, not even the confirmation, and the timeline said nothing.
    ({"type": "webinar_registered", "properties": {"starts_at": "2026-01-10T10:00:00Z"}},
     "properties.webinar_id", "is required"),
    ({"type": "unsubscribed", "properties": {"scope": "everything"}}, "properties.scope", "must be one of"),
    ({"type": "unsubscribed", "properties": {"scope": 5}}, "properties.scope", "must be one of"),
    ({"type": "subscribed", "properties": {"channel": 5}}, "properties.channel", "must be one of"),
    # A bounce marked in words of its own would be counted and do nothing (the address still mailed).
    ({"type": "email_bounced", "properties": {"type": "permanent"}}, "properties.type", "must be one of"),
    ({"type": "email_bounced", "properties": {"bounce_type": "Hard"}}, "properties.bounce_type", "must be one of"),
    ({"type": "assessment_completed", "properties": {"score": "high"}}, "properties.score", "must be a number"),
    ({"type": "assessment_completed", "properties": {"score": True}}, "properties.score", "must be a number"),
    ({"type": "page_viewed", "properties": {"category": {"x": 1}}}, "properties.category", "must be a string"),
    ({"type": "trial_started", "properties": {"ends_at": "next week"}}, "properties.ends_at", "RFC 3339"),
    # A won deal's amount was counted as it came: a text one silently as 0 revenue, one in yen as dollars.
    ({"type": "opportunity_won", "properties": {"amount": "5000"}}, "properties.amount", "must be a number"),
    ({"type": "opportunity_won", "properties": {"amount": -5}}, "properties.amount", "from 0 to"),
    ({"type": "opportunity_won", "properties": {"amount": 2.0 ** 60}}, "properties.amount", "from 0 to"),
    ({"type": "opportunity_won", "properties": {"amount": True}}, "properties.amount", "must be a number"),
    ({"type": "opportunity_won", "properties": {"amount": 10000, "currency": "JPY"}}, "properties.currency",
     "JPY has no exchange rate to USD"),
    ({"type": "opportunity_won", "properties": {"amount": 100, "currency": "dollars"}}, "properties.currency",
     "must be an ISO 4217 code"),
    ({"type": "opportunity_won", "properties": {"amount": 100, "currency": 840}}, "properties.currency",
     "must be a string"),
    ({"type": "opportunity_amount_changed", "properties": {"amount": 100}}, "properties.won_event_id",
     "is required"),
])
async def test_a_canonical_property_of_the_wrong_kind_is_a_422_naming_it(
        api: tuple[httpx.AsyncClient, FastAPI, Running], event: dict, field: str, why: str) -> None:
    client, _, _ = api
    client.headers.update(AUTH)
    assert (await client.post("/v1/leads", json={"id": "ev-1"})).status_code == 201
    r = await client.post("/v1/events", json={"lead_id": "ev-1", **event})
    assert r.status_code == 422, r.text
    assert why in r.json()["error"]["details"]["fields"][field], r.json()
    # The same event in a batch is refused alone; the good one beside it is taken.
    r = await client.post("/v1/events:batch", json={"events": [{"lead_id": "ev-1", **event},
                                                               {"lead_id": "ev-1", "type": "page_viewed"}]})
    assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
    assert [x["index"] for x in r.json()["rejected"]] == [0]
    timeline = (await client.get("/v1/leads/ev-1/timeline")).json()["items"]
    taken = [i for i in timeline if i["kind"] == "event" and i["type"] == event["type"]]
    assert len(taken) == (1 if event["type"] == "page_viewed" else 0)  # only the batch's good page view


async def test_canonical_properties_of_the_right_kind_and_custom_ones_are_taken(
        api: tuple[httpx.AsyncClient, FastAPI, Running]) -> None:
    client, _, _ = api
    client.headers.update(AUTH)
    assert (await client.post("/v1/leads", json={"id": "ev-2"})).status_code == 201
    starts = "2026-01-10T10:00:00Z"
    for event in ({"type": "webinar_registered", "properties": {"webinar_id": "w1", "starts_at": starts}},
                  {"type": "unsubscribed", "properties": {"scope": "transactional"}},
                  {"type": "subscribed", "properties": {"channel": "email"}},
                  {"type": "subscribed"},
                  {"type": "email_bounced", "properties": {"type": "soft"}},
                  {"type": "email_bounced", "properties": {"bounce_type": "hard"}},
                  {"type": "assessment_completed", "properties": {"score": 87.5, "assessment": "eligibility"}},
                  {"type": "page_viewed", "properties": {"category": "pricing", "anything": {"custom": [1]}}},
                  {"type": "custom_thing", "properties": {"scope": "whatever"}}):
        r = await client.post("/v1/events", json={"lead_id": "ev-2", **event})
        assert r.status_code == 202, (event, r.text)


def test_the_event_properties_file_names_only_known_kinds() -> None:
    rules = event_properties()
    assert rules.events["webinar_registered"].required == ["starts_at", "webinar_id"]
    assert {"starts_at", "ends_at"} <= {k for k, v in rules.kinds.items() if v == "time"}


async def test_a_won_deal_posted_counts_its_amount_converted_to_the_revenue_currency(
        api: tuple[httpx.AsyncClient, FastAPI, Running]) -> None:
    """As a CRM's deal (services/crm_sync/data/sync.yaml `revenue`): 100 EUR is 108 USD of revenue, an amount
    without a currency is in USD, and a caller's own `revenue` is replaced by the checked one."""
    client, _, _ = api
    client.headers.update(AUTH)
    assert (await client.post("/v1/leads", json={"id": "ev-won"})).status_code == 201
    for key, props in (("w-eur", {"amount": 100, "currency": "eur", "deal_id": "d1"}),
                       ("w-usd", {"amount": 250.5, "revenue": 1e9, "revenue_currency": "XXX"})):
        r = await client.post("/v1/events", json={"lead_id": "ev-won", "type": "opportunity_won",
                                                  "idempotency_key": key, "properties": props})
        assert r.status_code == 202, r.text
    timeline = (await client.get("/v1/leads/ev-won/timeline")).json()["items"]
    won = sorted((i["details"]["properties"]["amount"], i["details"]["properties"]["currency"],
                  i["details"]["properties"]["revenue"], i["details"]["properties"]["revenue_currency"])
                 for i in timeline if i["kind"] == "event" and i["type"] == "opportunity_won")
    assert won == [(100, "EUR", 108.0, "USD"), (250.5, "USD", 250.5, "USD")], timeline
