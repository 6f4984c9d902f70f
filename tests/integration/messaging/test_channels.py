"""Messaging's channels on the in-process engine (real Redis, SQLite and SMTP sink; no gRPC): what a
bus message leaves behind (suppressions, consent records with their time and source, erasure), what a
click, open or unsubscribe records, and how an ad audience is paged."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from nurture.rpc import DEADLINE_S
from services.messaging.clients import email_hash
from services.messaging.domain.tokens import Token, TokenError
from tests.bus_messages import bus_message
from tests.integration.messaging.conftest import InProc
from tests.integration.messaging.harness import make_lead

pytestmark = pytest.mark.anyio
AT = "2026-01-05T08:00:00Z"


def naive_now(inproc: InProc) -> datetime:
    return inproc.clock.now().astimezone(UTC).replace(tzinfo=None)


def consent(inproc: InProc, lead_id: str) -> list[tuple[str, bool, str]]:
    return [(r.channel, r.granted, r.source) for r in inproc.engine.store.consent_history(lead_id)]


def suppression_rows(inproc: InProc) -> list[tuple[str, str, str, str]]:
    """Every suppression with its source (no store method reads the source back)."""
    from sqlalchemy import select

    from services.messaging.tables import suppressions

    with inproc.db.session() as s:
        return sorted((r.email_hash, r.scope, r.reason, r.source) for r in s.execute(select(suppressions)))


def tracking_rows(inproc: InProc) -> list[tuple[str, str, str, str, int]]:
    from sqlalchemy import select

    from services.messaging.tables import tracking

    with inproc.db.session() as s:
        return sorted((r.key, r.kind, r.url, r.lead_id, r.hits) for r in s.execute(select(tracking)))


def scopes(inproc: InProc, address: str) -> dict[str, str]:
    h = email_hash(address)
    return inproc.engine.store.suppression_scopes([h]).get(h, {})


# --- the bus -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("occurred_at", "expected"), [
    (AT, datetime(2026, 1, 5, 8, 0)),                          # Z: UTC
    ("2026-01-05T09:30:00+01:00", datetime(2026, 1, 5, 8, 30)),
    ("yesterday", None),                                        # unreadable: the time it was heard
    ("", None),
    (None, None),
])
async def test_a_bus_message_is_recorded_at_the_time_it_happened(inproc: InProc, occurred_at: str | None,
                                                                 expected: datetime | None) -> None:
    lead = make_lead("t1", consent={"email": True})
    await inproc.bus(bus_message("b1", "t1", "lead_created", lead=lead, occurred_at=occurred_at,
                                 properties={"source": "form"}))
    [row] = inproc.engine.store.consent_history("t1")
    assert row.at == (expected or naive_now(inproc))
    assert (row.channel, row.granted, row.source) == ("email", True, "bus:lead_created:form")
    assert json.loads(row.evidence_json) == {"bus_id": "b1"}


@pytest.mark.parametrize(("etype", "props", "recorded"), [
    ("lead_created", {}, True),
    ("lead_updated", {"changed": ["consent"]}, True),
    ("lead_updated", {"changed": ["timezone"]}, False),
    ("lead_updated", {}, False),
    ("unsubscribed", {"scope": "nurture"}, True),
    ("spam_reported", {}, True),
    ("email_hard_bounced", {}, True),
    ("subscribed", {}, True),
    # A hard bounce a caller posts withdraws email consent in scoring as messaging's own does
    # (nurture.bounces), so the lead it carries is recorded alike; a soft one changes no consent.
    ("email_bounced", {"type": "hard"}, True),
    ("email_bounced", {"bounce_type": "hard"}, True),
    ("email_bounced", {"type": "soft"}, False),
    ("page_viewed", {}, False),
])
async def test_consent_is_recorded_from_the_events_that_carry_it(inproc: InProc, etype: str, props: dict[str, Any],
                                                                 recorded: bool) -> None:
    lead = make_lead("k1", consent={"email": False, "sms": True})
    await inproc.bus(bus_message("k-1", "k1", etype, lead=lead, properties=props, occurred_at=AT))
    expected = [("email", False, f"bus:{etype}:"), ("sms", True, f"bus:{etype}:")] if recorded else []
    assert consent(inproc, "k1") == expected


async def test_a_lead_without_a_consent_object_records_no_consent(inproc: InProc) -> None:
    await inproc.bus(bus_message("k-2", "k2", "lead_created", lead=make_lead("k2", consent=None), occurred_at=AT),
                     bus_message("k-3", "k3", "lead_created", lead=make_lead("k3", consent=["email"]), occurred_at=AT))
    assert consent(inproc, "k2") == [] and consent(inproc, "k3") == []


async def test_the_lead_id_may_come_from_the_lead_alone(inproc: InProc) -> None:
    lead = make_lead("k4", consent={"email": True}, lifecycle_stage="customer")
    await inproc.bus(bus_message("k-4", None, "lead_created", lead=lead, occurred_at=AT))
    assert consent(inproc, "k4") == [("email", True, "bus:lead_created:")]
    assert inproc.engine.store.ad_suppressed(["k4"]) == {"k4": "customer"}


async def test_a_message_without_an_id_is_not_handled(inproc: InProc) -> None:
    # one without the field at all (its JSON object, as an older producer wrote it), one with it empty
    message = bus_message("", "n1", "spam_reported", lead=make_lead("n1"), occurred_at=AT).as_dict()
    del message["id"]
    await inproc.bus(message, bus_message("", "n2", "spam_reported", lead=make_lead("n2"), occurred_at=AT))
    assert scopes(inproc, "n1@example.com") == {} and scopes(inproc, "n2@example.com") == {}
    assert consent(inproc, "n1") == [] and inproc.engine.store.ad_suppressed(["n1"]) == {}


async def test_only_the_unseen_messages_of_a_batch_are_handled(inproc: InProc) -> None:
    lead = make_lead("s1", consent={"email": True})
    await inproc.bus(bus_message("s-1", "s1", "lead_created", lead=lead, occurred_at=AT))
    await inproc.bus(bus_message("s-1", "s1", "lead_created", lead=lead, occurred_at=AT),
                     bus_message("s-2", "s1", "lead_updated", properties={"changed": ["consent"]},
                                 lead={**lead, "consent": {"email": False}}, occurred_at=AT))
    assert consent(inproc, "s1") == [("email", True, "bus:lead_created:"), ("email", False, "bus:lead_updated:")]


@pytest.mark.parametrize("etype", ["unsubscribed", "spam_reported", "email_hard_bounced"])
async def test_a_lead_without_an_address_leaves_no_suppression(inproc: InProc, etype: str) -> None:
    lead = make_lead("e1", email="")
    await inproc.bus(bus_message("e-1", "e1", etype, lead=lead, properties={"scope": "all"}, occurred_at=AT))
    assert inproc.engine.store.suppression_scopes([email_hash("")]) == {}


async def test_an_unsubscribe_heard_on_the_bus_is_kept_with_its_reason(inproc: InProc) -> None:
    lead = make_lead("r1")
    await inproc.bus(bus_message("r-1", "r1", "unsubscribed", lead=lead, properties={"scope": "transactional"},
                                 occurred_at=AT))
    assert scopes(inproc, "r1@example.com") == {"transactional": "unsubscribed"}
    assert suppression_rows(inproc) == [(email_hash("r1@example.com"), "transactional", "unsubscribed", "bus")]


@pytest.mark.parametrize(("etype", "props", "reason"), [
    ("spam_reported", {}, "spam_report"), ("email_hard_bounced", {}, "hard_bounce"),
    ("email_bounced", {"bounce_type": "hard"}, "hard_bounce")])
async def test_what_the_bus_suppresses_is_kept_with_the_bus_as_its_source(inproc: InProc, etype: str,
                                                                         props: dict[str, Any], reason: str) -> None:
    await inproc.bus(bus_message("r-2", "r2", etype, lead=make_lead("r2"), properties=props, occurred_at=AT))
    assert suppression_rows(inproc) == [(email_hash("r2@example.com"), "all", reason, "bus")]


async def test_an_erasure_heard_on_the_bus_forgets_the_lead_and_keeps_its_address_out(inproc: InProc) -> None:
    lead = make_lead("x1", timezone="UTC", lifecycle_stage="customer")
    inproc.scoring.add(lead)
    await inproc.bus(bus_message("x-0", "x1", "page_viewed", lead=lead, occurred_at=AT))
    assert inproc.engine.store.ad_suppressed(["x1"]) == {"x1": "customer"}
    await inproc.send("x1", "family.email_01")
    await inproc.settle()
    assert (await inproc.messages("x1"))["family.email_01"].status == "sent"
    await inproc.bus(bus_message("x-1", "x1", "lead_erased", lead={"id": "x1", "email": "x1@example.com"},
                                 occurred_at=AT))
    assert await inproc.messages("x1") == {}
    assert inproc.engine.store.timeline("x1", 10) == []
    assert scopes(inproc, "x1@example.com") == {"all": "erased"}
    assert inproc.engine.store.ad_suppressed(["x1"]) == {}


async def test_after_an_erasure_only_a_new_explicit_opt_in_lets_mail_go_to_the_address(inproc: InProc) -> None:
    """The last new-user run's find: an erased address could never get email again, even when the person
    opted in anew. Erasure keeps its suppression against stale imports (a lead created again with the old
    consent, consent updated, an old `subscribed` replayed); the person's `subscribed` (email) after the
    erasure is a new legal basis and lifts it. An unsubscribe before the erasure becomes the erasure's."""
    lead = make_lead("x2", timezone="UTC")
    await inproc.bus(bus_message("y-0", "x2", "unsubscribed", lead=lead, properties={"scope": "all"},
                                 occurred_at="2026-01-04T08:00:00Z"))
    await inproc.bus(bus_message("y-1", "x2", "lead_erased", lead={"id": "x2", "email": "x2@example.com"},
                                 occurred_at=AT))
    assert scopes(inproc, "x2@example.com") == {"all": "erased"}
    # A stale import: the lead again with its old consent, consent updated, its old opt-in replayed.
    again = make_lead("x2", timezone="UTC")
    inproc.scoring.add(again)
    await inproc.bus(bus_message("y-2", "x2", "lead_created", lead=again, occurred_at="2026-01-05T09:00:00Z"),
                     bus_message("y-3", "x2", "lead_updated", lead=again, properties={"changed": ["consent"]},
                                 occurred_at="2026-01-05T09:00:00Z"),
                     bus_message("y-4", "x2", "subscribed", lead=again, properties={"channel": "email"},
                                 occurred_at="2026-01-03T08:00:00Z"))
    assert scopes(inproc, "x2@example.com") == {"all": "erased"}
    await inproc.send("x2", "family.email_01")
    await inproc.settle()
    assert (await inproc.messages("x2"))["family.email_01"].status == "suppressed"
    # The person opts in anew.
    await inproc.bus(bus_message("y-5", "x2", "subscribed", lead=again, properties={"channel": "email"},
                                 occurred_at="2026-01-06T08:00:00Z"))
    assert scopes(inproc, "x2@example.com") == {}
    await inproc.send("x2", "family.email_02")
    await inproc.settle()
    assert (await inproc.messages("x2"))["family.email_02"].status == "sent"


async def test_a_spam_report_outlives_an_erasure_and_an_opt_in(inproc: InProc) -> None:
    lead = make_lead("x3", timezone="UTC")
    await inproc.bus(bus_message("z-0", "x3", "spam_reported", lead=lead, occurred_at="2026-01-04T08:00:00Z"),
                     bus_message("z-1", "x3", "lead_erased", lead={"id": "x3", "email": "x3@example.com"},
                                 occurred_at=AT))
    await inproc.bus(bus_message("z-2", "x3", "subscribed", lead=lead, properties={"channel": "email"},
                                 occurred_at="2026-01-06T08:00:00Z"))
    assert scopes(inproc, "x3@example.com") == {"all": "spam_report"}


# --- tracking and unsubscribes ---------------------------------------------------------------------

SENT_WITH = ("email", True, "scoring:lead")   # the consent the send was decided with


async def sent_message(inproc: InProc, lead_id: str, template: str = "family.email_01", **over: Any) -> str:
    inproc.scoring.add(make_lead(lead_id, timezone="UTC", **over))
    sent = await inproc.send(lead_id, template)
    await inproc.settle()
    return str(sent.message_id)


# What analytics groups family.email_01's events by: its template's journey stage, topic and format.
FAMILY_EMAIL_01 = {"stage": "welcome", "topic": "family_relocation", "format": "newsletter"}


async def test_a_click_is_fed_to_scoring_with_what_was_clicked(inproc: InProc) -> None:
    mid = await sent_message(inproc, "c1")
    row = (await inproc.messages("c1"))["family.email_01"]
    url = "https://www.borderbridge.example/pathways"
    await inproc.channels.track(inproc.engine.signer.sign(Token("click", mid, "c1", url=url, link=1)), "click")
    [_, clicked, opened] = inproc.scoring.events
    props = {"message_id": mid, "journey": "family", "step": "email_01", "template": "family.email_01",
             "url": url, "variant": row.variant, "channel": "email", **FAMILY_EMAIL_01}
    assert (clicked.lead_id, clicked.type, json.loads(clicked.properties_json)) == ("c1", "email_clicked", props)
    assert (opened.lead_id, opened.type, json.loads(opened.properties_json)) == ("c1", "email_opened",
                                                                               {**props, "url": ""})
    assert clicked.occurred_at.ToDatetime() == naive_now(inproc) == opened.occurred_at.ToDatetime()
    lines = inproc.engine.store.timeline("c1", 20)
    summaries = [(r.type, r.summary) for r in lines]
    assert ("email_clicked", f"family.email_01 clicked: {url}") in summaries
    [clicked_line] = [r for r in lines if r.type == "email_clicked"]
    assert json.loads(clicked_line.details_json) == props
    assert tracking_rows(inproc) == [(f"click:{mid}:1", "click", url, "c1", 1), (f"open:{mid}", "open", "", "c1", 1)]
    assert not [s for t, s in summaries if t == "email_opened"]   # the implied open has no line of its own


async def test_a_click_on_an_email_about_an_interest_carries_it_as_its_category(inproc: InProc) -> None:
    """This run's find: the journeys' interest branches (the seed's "if engaging with education content,
    send additional school system resources") listen to email_clicked with `category: education`, and
    no tracked click carried one, so clicking the education email never fired them."""
    mid = await sent_message(inproc, "c2", "family.email_04")
    await inproc.channels.track(inproc.engine.signer.sign(Token("click", mid, "c2", url="https://x.example/",
                                                                link=0)), "click")
    clicked = [e for e in inproc.scoring.events if e.type == "email_clicked"]
    assert [json.loads(e.properties_json)["category"] for e in clicked] == ["education"]
    # An email about no particular interest carries none.
    mid = await sent_message(inproc, "c3")
    await inproc.channels.track(inproc.engine.signer.sign(Token("click", mid, "c3", url="https://x.example/",
                                                                link=0)), "click")
    assert all("category" not in json.loads(e.properties_json) for e in inproc.scoring.events if e.lead_id == "c3")


async def test_an_open_is_fed_to_scoring_once(inproc: InProc) -> None:
    mid = await sent_message(inproc, "o1")
    token = inproc.engine.signer.sign(Token("open", mid, "o1"))
    first = await inproc.channels.track(token, "open")
    again = await inproc.channels.track(token, "open")
    assert (first.url, first.message_id, first.duplicate) == ("", mid, False)
    assert (again.message_id, again.duplicate) == (mid, True)
    assert tracking_rows(inproc) == [(f"open:{mid}", "open", "", "o1", 2)]   # the second hit is counted
    assert [(ev.type, ev.idempotency_key) for ev in inproc.scoring.events] == [
        ("email_sent", f"sent:{mid}"), ("email_opened", f"open:{mid}")]
    assert ("email_opened", "family.email_01 opened") in [
        (r.type, r.summary) for r in inproc.engine.store.timeline("o1", 20)]


@pytest.mark.parametrize(("scope", "channel"), [("", "email:nurture"), ("nurture", "email:nurture"),
                                                 ("transactional", "email:transactional"), ("all", "email")])
async def test_an_unsubscribe_records_consent_suppression_and_ads(inproc: InProc, scope: str, channel: str) -> None:
    mid = await sent_message(inproc, "u1")
    token = inproc.engine.signer.sign(Token("unsubscribe", mid, "u1"))
    done = await inproc.channels.unsubscribe(token, scope=scope, source="page", dry_run=False)
    effective = scope or "nurture"
    assert (done.lead_id, done.scope, done.category, done.journey, done.already) == (
        "u1", effective, "nurture", "family", False)
    assert consent(inproc, "u1") == [SENT_WITH, (channel, False, "unsubscribe:page")]
    assert scopes(inproc, "u1@example.com") == {effective: "unsubscribed"}
    assert inproc.engine.store.ad_suppressed(["u1"]) == {"u1": "unsubscribed"}
    [ev] = [ev for ev in inproc.scoring.events if ev.type == "unsubscribed"]
    assert ev.idempotency_key == f"unsub:{mid}:{effective}"
    assert json.loads(ev.properties_json) == {"message_id": mid, "journey": "family", "step": "email_01",
                                              "template": "family.email_01", "scope": effective, "source": "page",
                                              **FAMILY_EMAIL_01}
    assert ("unsubscribed", f"unsubscribed ({effective}) via page") in [
        (r.type, r.summary) for r in inproc.engine.store.timeline("u1", 20)]
    assert suppression_rows(inproc) == [(email_hash("u1@example.com"), effective, "unsubscribed", "page")]
    assert tracking_rows(inproc) == [(f"unsub:{mid}:{effective}", "unsubscribe", "", "u1", 1)]


async def test_a_preview_of_an_unsubscribe_changes_nothing(inproc: InProc) -> None:
    mid = await sent_message(inproc, "p1")
    token = inproc.engine.signer.sign(Token("unsubscribe", mid, "p1"))
    preview = await inproc.channels.unsubscribe(token, scope="all", source="page", dry_run=True)
    assert (preview.lead_id, preview.scope, preview.category, preview.journey, preview.already) == (
        "p1", "all", "nurture", "family", False)
    assert consent(inproc, "p1") == [SENT_WITH] and scopes(inproc, "p1@example.com") == {}
    assert inproc.engine.store.ad_suppressed(["p1"]) == {}
    assert [ev.type for ev in inproc.scoring.events] == ["email_sent"]


async def test_an_unknown_scope_is_refused(inproc: InProc) -> None:
    mid = await sent_message(inproc, "q1")
    token = inproc.engine.signer.sign(Token("unsubscribe", mid, "q1"))
    with pytest.raises(TokenError):
        await inproc.channels.unsubscribe(token, scope="marketing", source="page", dry_run=True)
    with pytest.raises(TokenError):
        await inproc.channels.unsubscribe(token, scope="marketing", source="page", dry_run=False)
    assert consent(inproc, "q1") == [SENT_WITH]


async def test_an_unsubscribe_from_a_message_no_longer_kept_still_suppresses_the_lead(inproc: InProc) -> None:
    # The message was erased (or never stored): the address comes from the lead itself.
    inproc.scoring.add(make_lead("g1", timezone="UTC"))
    token = inproc.engine.signer.sign(Token("unsubscribe", "m-gone", "g1"))
    done = await inproc.channels.unsubscribe(token, scope="", source="link", dry_run=False)
    assert (done.lead_id, done.scope, done.category, done.journey, done.already) == (
        "g1", "nurture", "nurture", "", False)
    assert scopes(inproc, "g1@example.com") == {"nurture": "unsubscribed"}
    assert consent(inproc, "g1") == [("email:nurture", False, "unsubscribe:link")]
    [ev] = inproc.scoring.events
    assert json.loads(ev.properties_json) == {"message_id": "m-gone", "journey": "", "step": "", "template": "",
                                              "scope": "nurture", "source": "link"}


@pytest.mark.parametrize("lead", [make_lead("g2", email=""), None])
async def test_an_unsubscribe_without_an_address_records_consent_only(inproc: InProc,
                                                                      lead: dict[str, Any] | None) -> None:
    if lead:
        inproc.scoring.add(lead)
    token = inproc.engine.signer.sign(Token("unsubscribe", "m-gone", "g2"))
    done = await inproc.channels.unsubscribe(token, scope="all", source="link", dry_run=False)
    assert (done.scope, done.already) == ("all", False)
    assert consent(inproc, "g2") == [("email", False, "unsubscribe:link")]
    assert inproc.engine.store.suppression_scopes(["", email_hash(""), email_hash("g2@example.com")]) == {}
    assert suppression_rows(inproc) == []
    assert tracking_rows(inproc) == [("unsub:m-gone:all", "unsubscribe", "", "g2", 1)]


# --- ad audiences ------------------------------------------------------------------------------------

async def test_an_audience_is_paged_by_cursor_without_the_leads_suppressed_from_ads(inproc: InProc) -> None:
    store, now = inproc.engine.store, inproc.clock.now()
    for lead_id in ("a6", "a1", "a2", "a3", "a4", "a5"):
        store.audience_change("family.decision", lead_id, True, now)
    store.audience_change("family.other", "a9", True, now)
    store.ad_suppress("a3", "customer", now)
    audience = inproc.channels.audience

    def page(p: Any) -> tuple[Any, ...]:
        return p.name, p.lead_ids, p.suppressed, p.next_cursor, p.journeys_available

    assert page(await audience("family.decision", "", 2)) == (
        "family.decision", ["a1", "a2"], {"a3": "customer"}, "2", False)
    assert page(await audience("family.decision", "2", 2))[1:4] == (["a4", "a5"], {"a3": "customer"}, "4")
    assert page(await audience("family.decision", "4", 2))[1:4] == (["a6"], {"a3": "customer"}, "")
    assert page(await audience("family.decision", "3", 2))[1:4] == (["a5", "a6"], {"a3": "customer"}, "")  # exactly
    assert page(await audience("family.decision", "1", 3))[1:4] == (["a2", "a4", "a5"], {"a3": "customer"}, "4")
    assert page(await audience("family.decision", "", 0))[1:4] == (["a1", "a2", "a4", "a5", "a6"],
                                                                   {"a3": "customer"}, "")
    assert page(await audience("family.decision", "", 5))[1:4] == (["a1", "a2", "a4", "a5", "a6"],
                                                                   {"a3": "customer"}, "")
    assert page(await audience("nobody", "", 10)) == ("nobody", [], {}, "", False)


# --- with journeys answering (in process) ------------------------------------------------------------

@pytest.fixture
def journeys(inproc: InProc) -> Any:
    from tests.integration.messaging.harness import InProcessChannel, JourneysFake

    fake = JourneysFake(page_size=2)
    fake.channel = InProcessChannel(fake)
    inproc.channels.journeys_channel = fake.channel
    return fake


async def test_an_audience_joins_the_journeys_members_page_by_page(inproc: InProc, journeys: Any) -> None:
    journeys.members["family.decision"] = ["j1", "j2", "j3", "j4", "j5"]
    now = inproc.clock.now()
    inproc.engine.store.audience_change("family.decision", "s1", True, now)
    inproc.engine.store.audience_change("family.decision", "j2", True, now)
    inproc.engine.store.ad_suppress("j4", "customer", now)
    page = await inproc.channels.audience("family.decision", "", 0)
    assert (page.lead_ids, page.suppressed, page.next_cursor, page.journeys_available) == (
        ["j1", "j2", "j3", "j5", "s1"], {"j4": "customer"}, "", True)
    assert [(r.journey, r.stage, r.status, r.cursor, r.limit) for r in journeys.requests] == [
        ("family", "decision", "active", "", 1000), ("family", "decision", "active", "2", 1000),
        ("family", "decision", "active", "4", 1000)]
    assert journeys.channel.timeouts == [DEADLINE_S] * 3


async def test_a_whole_journey_is_an_audience(inproc: InProc, journeys: Any) -> None:
    journeys.members["family"] = ["j1"]
    page = await inproc.channels.audience("family", "", 10)
    assert (page.lead_ids, page.journeys_available) == (["j1"], True)
    assert [(r.journey, r.stage) for r in journeys.requests] == [("family", "")]


async def test_an_audience_neither_journeys_nor_a_step_know_is_not_found(inproc: InProc, journeys: Any) -> None:
    from services.messaging.app.channels import NotFoundError

    with pytest.raises(NotFoundError, match="unknown audience 'nope.x': audiences are journeys or journey.stage"):
        await inproc.channels.audience("nope.x", "", 10)
    inproc.engine.store.audience_change("nope.x", "s1", True, inproc.clock.now())   # a step filled it
    page = await inproc.channels.audience("nope.x", "", 10)
    assert (page.lead_ids, page.journeys_available) == (["s1"], False)


async def test_an_audience_while_journeys_is_down_is_what_the_steps_filled(inproc: InProc, journeys: Any,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="services.messaging.app.channels")
    journeys.members["family"] = ["j1"]
    journeys.down = True
    inproc.engine.store.audience_change("family", "s1", True, inproc.clock.now())
    page = await inproc.channels.audience("family", "", 10)
    assert (page.lead_ids, page.journeys_available) == (["s1"], False)
    assert (await inproc.channels.audience("other", "", 10)).lead_ids == []   # not a NOT_FOUND: nothing known
    said = [r.getMessage() for r in caplog.records if r.name == "services.messaging.app.channels"]
    assert said[0].startswith("journeys unavailable for audience family: ") and "UNAVAILABLE" in said[0]


async def test_personalisation_follows_the_leads_active_journey_stages(inproc: InProc, journeys: Any,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="services.messaging.app.channels")
    inproc.scoring.add(make_lead("p1", segment="family", lifecycle_stage="lead",
                                 attributes={"countries_of_interest": ["CA", "AU", "NZ", "UK", "US", "IE"]}))
    journeys.enrollments["p1"] = [{"journey": "family", "stage": "decision", "status": "active"},
                                  {"journey": "webinar", "stage": "registration", "status": "completed"}]
    p = await inproc.channels.personalization("p1")
    assert p.journeys_available and p.segment == "family"
    assert p.featured_countries == ["CA", "AU", "NZ", "UK", "US"]
    assert p.recommended_content and all(r["key"].startswith("family.") for r in p.recommended_content)
    assert {r["reason"] for r in p.recommended_content} == {"current journey stage: family/decision"}
    assert [r.lead_id for r in journeys.requests] == ["p1"]
    assert journeys.channel.timeouts == [DEADLINE_S]
    catalog = inproc.engine.catalog
    assert all(r["title"] == catalog.specs[r["key"]].cta_label and r["url"] == catalog.cta_destination(
        catalog.specs[r["key"]]) for r in p.recommended_content)
    journeys.down = True
    unavailable = await inproc.channels.personalization("p1")
    assert not unavailable.journeys_available and unavailable.recommended_content
    assert {r["reason"] for r in unavailable.recommended_content} == {"lifecycle stage lead: family/education"}
    said = [r.getMessage() for r in caplog.records if r.name == "services.messaging.app.channels"]
    assert said[-1].startswith("journeys unavailable for personalisation: ") and "UNAVAILABLE" in said[-1]


async def test_personalisation_of_an_unknown_lead_is_not_found(inproc: InProc, journeys: Any) -> None:
    from services.messaging.app.channels import NotFoundError

    with pytest.raises(NotFoundError, match="lead 'ghost' not found"):
        await inproc.channels.personalization("ghost")


async def test_signals_on_the_bus_keep_a_lead_out_of_ads(inproc: InProc) -> None:
    await inproc.bus(bus_message("sg-1", "sg", "email_clicked", lead=make_lead("sg"), occurred_at=AT,
                                 signals=["high_engagement"]),
                     bus_message("sg-2", "sh", "email_clicked", lead=make_lead("sh"), occurred_at=AT, signals=[]))
    assert inproc.engine.store.ad_suppressed(["sg", "sh"]) == {"sg": "highly_engaged"}


async def test_the_lead_id_of_the_message_counts_when_the_lead_has_none(inproc: InProc) -> None:
    lead = {"email": "k6@example.com", "consent": {"email": True}}
    await inproc.bus(bus_message("k-6", "k6", "lead_created", lead=lead, occurred_at=AT))
    assert consent(inproc, "k6") == [("email", True, "bus:lead_created:")]
