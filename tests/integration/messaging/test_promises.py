"""Messaging's promises, each at its boundary, on the in-process engine (no gRPC: real Redis, SQLite and
SMTP sink): consent, suppression from the bus, the weekly cap, the recorded intent before SMTP, and
decisions taken with the lead as it is at delivery time."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from services.messaging.storage import Message
from tests.integration.messaging.conftest import InProc
from tests.integration.messaging.harness import make_lead

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("consent", "granted"), [
    ({"email": True}, True),
    ({"email": True, "sms": False}, True),
    ({"email": False}, False),
    ({}, False),                   # no consent record at all
    (None, False),                 # consent_json that is not an object
    ({"sms": True}, False),        # consent for another channel only
    ({"email": None}, False),
    ({"email": "true"}, False),    # only the JSON value true is consent
    ({"email": 1}, False),
])
async def test_only_explicit_email_consent_lets_mail_go(inproc: InProc, consent: Any, granted: bool) -> None:
    inproc.scoring.add(make_lead("c1", consent=consent, timezone="UTC"))
    await inproc.send("c1", "family.email_01")
    await inproc.send("c1", "webinar.email_01", category="transactional",
                      context={"starts_at": "2026-01-09T17:00:00Z", "webinar_title": "Canada 101"})
    await inproc.settle()
    rows = await inproc.messages("c1")
    if granted:
        assert {t: r.status for t, r in rows.items()} == {"family.email_01": "sent", "webinar.email_01": "sent"}
        assert inproc.mails_to("c1@example.com") == 2
    else:
        assert {t: (r.status, r.reason) for t, r in rows.items()} == {
            "family.email_01": ("suppressed", "no email consent"),
            "webinar.email_01": ("suppressed", "no email consent")}
        assert inproc.mails_to("c1@example.com") == 0


@pytest.mark.parametrize(("scope", "nurture", "transactional"), [
    (None, "suppressed", "sent"),            # an unsubscribe without a scope is from nurture mail
    ("nurture", "suppressed", "sent"),
    ("transactional", "sent", "suppressed"),
    ("all", "suppressed", "suppressed"),
    ("bogus", "suppressed", "sent"),         # an unknown scope is read as nurture
])
async def test_an_unsubscribe_heard_on_the_bus_suppresses_the_mail_it_names(
        inproc: InProc, scope: str | None, nurture: str, transactional: str) -> None:
    lead = make_lead("u1", timezone="UTC")
    inproc.scoring.add(lead)
    props = {} if scope is None else {"scope": scope}
    await inproc.bus({"id": "bus-u1", "lead_id": "u1", "type": "unsubscribed", "properties": props, "lead": lead,
                      "occurred_at": "2026-01-05T09:00:00Z"})
    await inproc.send("u1", "family.email_01")
    await inproc.send("u1", "webinar.email_01", category="transactional",
                      context={"starts_at": "2026-01-09T17:00:00Z", "webinar_title": "Canada 101"})
    await inproc.settle()
    rows = await inproc.messages("u1")
    assert rows["family.email_01"].status == nurture
    assert rows["webinar.email_01"].status == transactional
    for row in rows.values():
        if row.status == "suppressed":
            assert row.reason.startswith("address suppressed (unsubscribed, ")
    assert inproc.mails_to("u1@example.com") == [nurture, transactional].count("sent")


async def test_the_weekly_cap_holds_the_eleventh_nurture_email_until_the_first_is_a_week_old(inproc: InProc) -> None:
    # Policy: 3 nurture a day, 10 in any rolling week, 2 h apart. Three a day for three days and one on
    # the fourth make ten; the eleventh (day 4, no day cap nor gap in the way) waits for the week cap.
    inproc.scoring.add(make_lead("wk", timezone="UTC"))
    t0 = inproc.clock.now()
    n = 0
    for day in range(4):
        for slot in range(3 if day < 3 else 1):
            inproc.clock.set(t0 + timedelta(days=day, hours=2 * slot))
            n += 1
            await inproc.send("wk", f"family.email_{n:02d}")
            await inproc.settle()
    rows = await inproc.messages("wk")
    assert [r.status for r in rows.values()] == ["sent"] * 10
    inproc.clock.set(t0 + timedelta(days=3, hours=2))
    await inproc.send("wk", "family.email_11")
    await inproc.settle()
    held = (await inproc.messages("wk"))["family.email_11"]
    assert (held.status, held.reason) == ("scheduled", "deferred: frequency cap reached")
    due = held.due_at.replace(tzinfo=t0.tzinfo)
    assert due == t0 + timedelta(days=7)
    inproc.clock.set(due - timedelta(seconds=1))
    await inproc.settle()
    assert (await inproc.messages("wk"))["family.email_11"].status == "scheduled"
    inproc.clock.set(due)
    await inproc.settle()
    assert (await inproc.messages("wk"))["family.email_11"].status == "sent"
    assert inproc.mails_to("wk@example.com") == 11


async def test_the_send_intent_is_committed_before_the_smtp_transaction(inproc: InProc) -> None:
    # While the SMTP server holds the message, the row already says `sending`, the attempt is counted
    # and the subject recorded: a crash now is re-sent with the same Message-ID, never lost or doubled.
    inproc.scoring.add(make_lead("in", timezone="UTC"))
    sent = await inproc.send("in", "family.email_01")
    seen: list[Message] = []
    handler = inproc.sink.handler
    original = handler.handle_DATA

    async def observe(server: Any, session: Any, envelope: Any) -> str:
        seen.append(inproc.engine.store.get_messages([sent.message_id])[sent.message_id])
        return await original(server, session, envelope)

    handler.handle_DATA = observe  # type: ignore[method-assign]
    await inproc.settle()
    [during] = seen
    after = (await inproc.messages("in"))["family.email_01"]
    assert (during.status, during.attempts) == ("sending", 1)
    assert during.subject and during.subject == after.subject
    assert (after.status, after.attempts) == ("sent", 1)


async def test_consent_is_decided_with_the_lead_as_it_is_when_the_mail_goes(inproc: InProc) -> None:
    # Queued with consent, withdrawn before its time came: suppressed, not sent.
    inproc.scoring.add(make_lead("late", timezone="America/Los_Angeles"))
    await inproc.send("late", "family.email_01")      # 01:00 in Los Angeles: deferred to 08:00 there
    await inproc.settle()
    row = (await inproc.messages("late"))["family.email_01"]
    assert row.status == "scheduled" and "daytime" in row.reason
    inproc.scoring.update("late", consent={"email": False})
    inproc.clock.set(row.due_at.replace(tzinfo=inproc.clock.now().tzinfo))
    await inproc.settle()
    row = (await inproc.messages("late"))["family.email_01"]
    assert (row.status, row.reason) == ("suppressed", "no email consent")
    assert inproc.mails_to("late@example.com") == 0


async def test_a_hard_bounce_reaches_scoring_which_withdraws_consent(inproc: InProc) -> None:
    # The scoring fake changes the lead like scoring does: after the bounce, the lead has no consent.
    inproc.scoring.add(make_lead("hb", email="hb@reject.invalid", timezone="UTC"))
    await inproc.send("hb", "family.email_01")
    await inproc.settle()
    assert [ev.type for ev in inproc.scoring.events] == ["email_hard_bounced"]
    assert inproc.scoring.leads["hb"]["consent"] == {"email": False}
    inproc.scoring.update("hb", email="hb@example.com")   # a new address, but consent stays withdrawn
    await inproc.send("hb", "family.email_02")
    await inproc.settle()
    row = (await inproc.messages("hb"))["family.email_02"]
    assert (row.status, row.reason) == ("suppressed", "no email consent")


async def test_a_click_is_recorded_once_implies_an_open_and_returns_the_signed_destination(inproc: InProc) -> None:
    from services.messaging.domain.tokens import Token, TokenError

    inproc.scoring.add(make_lead("tk", timezone="UTC"))
    sent = await inproc.send("tk", "family.email_01")
    await inproc.settle()
    signer = inproc.engine.signer
    click = signer.sign(Token("click", sent.message_id, "tk", url="https://www.borderbridge.example/x", link=2))
    first = await inproc.channels.track(click, "click")
    assert (first.url, first.message_id, first.duplicate) == ("https://www.borderbridge.example/x",
                                                             sent.message_id, False)
    again = await inproc.channels.track(click, "click")
    assert again.duplicate and again.url == first.url
    events = [(ev.type, ev.idempotency_key) for ev in inproc.scoring.events]
    assert events == [("email_sent", f"sent:{sent.message_id}"), ("email_clicked", f"click:{sent.message_id}:2"),
                      ("email_opened", f"open:{sent.message_id}")]
    # The open the click implied is the message's one open: a later pixel hit is a duplicate.
    opened = await inproc.channels.track(signer.sign(Token("open", sent.message_id, "tk")), "open")
    assert opened.duplicate and opened.url == ""
    # A click token is not an open token, nor an unsubscribe token.
    with pytest.raises(TokenError):
        await inproc.channels.track(click, "open")
    with pytest.raises(TokenError):
        await inproc.channels.unsubscribe(click, scope="", source="link", dry_run=False)
    # A message that no longer exists (erased): the signed URL is still followed, nothing recorded.
    gone = signer.sign(Token("click", "m-erased", "tk", url="https://www.borderbridge.example/y"))
    assert (await inproc.channels.track(gone, "click")).duplicate
    assert len(inproc.scoring.events) == 3


@pytest.mark.parametrize(("template", "category", "scope", "expected_scope"), [
    ("family.email_01", "", "", "nurture"),                     # the link of a nurture email stops nurture mail
    ("webinar.email_01", "transactional", "", "transactional"),
    ("family.email_01", "", "all", "all"),
])
async def test_an_unsubscribe_link_stops_the_mail_of_its_scope_at_once(inproc: InProc, template: str, category: str,
                                                                       scope: str, expected_scope: str) -> None:
    from services.messaging.domain.tokens import Token

    inproc.scoring.add(make_lead("us", timezone="UTC"))
    sent = await inproc.send("us", template, category=category,
                             context={"starts_at": "2026-01-09T17:00:00Z", "webinar_title": "Canada 101"})
    await inproc.settle()
    token = inproc.engine.signer.sign(Token("unsubscribe", sent.message_id, "us"))
    preview = await inproc.channels.unsubscribe(token, scope=scope, source="page", dry_run=True)
    assert (preview.scope, preview.already) == (expected_scope, False)
    done = await inproc.channels.unsubscribe(token, scope=scope, source="page", dry_run=False)
    assert (done.lead_id, done.scope, done.already) == ("us", expected_scope, False)
    assert (await inproc.channels.unsubscribe(token, scope=scope, source="page", dry_run=False)).already
    unsubscribed = [json.loads(ev.properties_json) for ev in inproc.scoring.events if ev.type == "unsubscribed"]
    assert [p["scope"] for p in unsubscribed] == [expected_scope]
    await inproc.send("us", "family.email_02")
    await inproc.send("us", "webinar.email_02", category="transactional",
                      context={"starts_at": "2026-01-09T17:00:00Z", "webinar_title": "Canada 101"})
    await inproc.settle()
    rows = await inproc.messages("us")
    nurture_stopped = expected_scope in ("nurture", "all")
    transactional_stopped = expected_scope in ("transactional", "all")
    assert rows["family.email_02"].status == ("suppressed" if nurture_stopped else "sent")
    assert rows["webinar.email_02"].status == ("suppressed" if transactional_stopped else "sent")


@pytest.mark.parametrize(("etype", "props", "lead_over", "scopes", "ad"), [
    ("spam_reported", {}, {}, {"all": "spam_report"}, None),
    ("email_hard_bounced", {}, {}, {"all": "hard_bounce"}, None),
    ("email_bounced", {"type": "hard"}, {}, {"all": "hard_bounce"}, None),
    ("email_bounced", {"bounce_type": "hard"}, {}, {"all": "hard_bounce"}, None),
    ("email_bounced", {"type": "soft"}, {}, {}, None),
    ("unsubscribed", {"scope": "all"}, {}, {"all": "unsubscribed"}, "unsubscribed"),
    ("opportunity_won", {}, {}, {}, "customer"),
    ("subscribed", {"plan": "pro"}, {}, {}, "customer"),
    ("stage_changed", {"old": "sql", "new": "customer"}, {}, {}, "customer"),
    ("stage_changed", {"old": "lead", "new": "mql"}, {}, {}, None),
    ("page_viewed", {}, {"lifecycle_stage": "customer"}, {}, "customer"),
    ("page_viewed", {}, {}, {}, None),
])
async def test_what_the_bus_says_about_an_address_or_a_customer_holds(
        inproc: InProc, etype: str, props: dict, lead_over: dict, scopes: dict, ad: str | None) -> None:
    from services.messaging.clients import email_hash

    lead = make_lead("bx", timezone="UTC", **lead_over)
    message = {"id": f"bus-{etype}", "lead_id": "bx", "type": etype, "properties": props, "lead": lead,
               "occurred_at": "2026-01-05T08:00:00Z"}
    await inproc.bus(message)
    await inproc.bus(message)     # the same bus message again (a replay): no second effect
    store = inproc.engine.store
    assert store.suppression_scopes([email_hash("bx@example.com")]).get(email_hash("bx@example.com"), {}) == scopes
    assert store.ad_suppressed(["bx"]) == ({"bx": ad} if ad else {})


async def test_subscribing_again_lifts_unsubscribes_but_never_a_spam_report(inproc: InProc) -> None:
    from services.messaging.clients import email_hash

    store = inproc.engine.store
    for lead_id, first, lift, scopes_after, resubscribed in (
        # A nurture unsubscribe, then a subscription to email: nurture mail goes again, and journeys hear it.
        ("r1", [("unsubscribed", {"scope": "nurture"})], ("subscribed", {"channel": "email"}), {}, ["nurture"]),
        # A paid subscription (no channel) is not a subscription to email.
        ("r2", [("unsubscribed", {"scope": "nurture"})], ("subscribed", {"plan": "pro"}),
         {"nurture": "unsubscribed"}, None),
        # Consent given again through the profile lifts an unsubscribe from everything.
        ("r3", [("unsubscribed", {"scope": "all"})], ("lead_updated", {"changed": ["consent"]}), {}, ["all"]),
        # A spam report stays, whatever the person does later; only the unsubscribe is lifted.
        ("r4", [("spam_reported", {}), ("unsubscribed", {"scope": "transactional"})],
         ("subscribed", {"channel": "email"}), {"all": "spam_report"}, ["transactional"]),
    ):
        lead = make_lead(lead_id, timezone="UTC")
        inproc.scoring.add(lead)
        base = {"lead_id": lead_id, "lead": lead, "occurred_at": "2026-01-05T08:00:00Z"}
        await inproc.bus(*({**base, "id": f"{lead_id}-{i}", "type": t, "properties": p}
                           for i, (t, p) in enumerate(first)))
        await inproc.bus({**base, "id": f"{lead_id}-lift", "type": lift[0], "properties": lift[1]})
        await inproc.bus({**base, "id": f"{lead_id}-lift", "type": lift[0], "properties": lift[1]})  # a replay
        ehash = email_hash(f"{lead_id}@example.com")
        assert store.suppression_scopes([ehash]).get(ehash, {}) == scopes_after, lead_id
        await inproc.settle()
        heard = [json.loads(ev.properties_json) for ev in inproc.scoring.events
                 if ev.type == "email_resubscribed" and ev.lead_id == lead_id]
        assert heard == ([{"scopes": resubscribed}] if resubscribed else []), lead_id
    await inproc.send("r1", "family.email_02")
    await inproc.settle()
    assert (await inproc.messages("r1"))["family.email_02"].status == "sent"


async def test_consent_heard_on_the_bus_is_recorded_with_its_source(inproc: InProc) -> None:
    lead = make_lead("cx", timezone="UTC", consent={"email": True, "sms": False})
    base = {"lead_id": "cx", "lead": lead, "occurred_at": "2026-01-05T08:00:00Z"}
    await inproc.bus({**base, "id": "c1", "type": "lead_created", "properties": {"source": "form"}},
                     {**base, "id": "c2", "type": "lead_updated", "properties": {"changed": ["timezone"]}},
                     {**base, "id": "c3", "type": "page_viewed", "properties": {}})
    await inproc.bus({**base, "id": "c4", "type": "lead_updated", "properties": {"changed": ["consent"]},
                      "lead": {**lead, "consent": {"email": False}}})
    history = [(r.channel, r.granted, r.source) for r in inproc.engine.store.consent_history("cx")]
    assert history == [("email", True, "bus:lead_created:form"), ("sms", False, "bus:lead_created:form"),
                       ("email", False, "bus:lead_updated:")]


async def test_withdraw_takes_only_the_left_enrolments_waiting_nurture_mail(inproc: InProc) -> None:
    # What journeys asks once a lead left an enrolment by a rule (exit, goal): its nurture mail waiting for
    # the lead's daytime is not sent. Only that enrolment's (its occurrence prefix, not another entry's or
    # another webinar's), only nurture, only what waits for a later time.
    lead_id = "w:1"   # an id holding ':' still matches by the key's head, not by splitting it
    inproc.scoring.add(make_lead(lead_id, timezone="Pacific/Kiritimati"))   # UTC+14: night at the epoch's 09:00
    keys = {
        "family.email_01": f"{lead_id}:family:1:email_01:2.1",         # the left entry (2)
        "family.email_02": f"{lead_id}:family:1:email_02:1.1",         # an earlier entry
        "family.email_03": f"{lead_id}:family:1:email_03:2.10",        # the left entry, a later visit
        "webinar.email_06": f"{lead_id}:webinar:1:email_06:wB@1.1",    # another webinar's
        "webinar.email_04": f"{lead_id}:webinar:1:email_04:wA@1.1",    # the left webinar's
    }
    for template, key in keys.items():
        reply = await inproc.send(lead_id, template, key=key, category="nurture",
                                  context={"webinar_title": "Canada 101", "starts_at": "2026-01-09T17:00:00Z"})
        assert reply.status == "scheduled", (template, reply)
    await inproc.send(lead_id, "family.email_04", key=f"{lead_id}:family:1:email_04:2.2", category="transactional")
    await inproc.settle()
    assert await inproc.engine.withdraw(lead_id=lead_id, journey="family", journey_version=1,
                                        occurrence_prefix="2.", reason="converted") == 2
    assert await inproc.engine.withdraw(lead_id=lead_id, journey="webinar", journey_version=1,
                                        occurrence_prefix="wA@1.", reason="webinar.left") == 1
    assert await inproc.engine.withdraw(lead_id=lead_id, journey="family", journey_version=1,
                                        occurrence_prefix="2.", reason="converted") == 0   # idempotent
    rows = await inproc.messages(lead_id)
    assert {t: r.status for t, r in rows.items()} == {
        "family.email_01": "suppressed", "family.email_02": "scheduled", "family.email_03": "suppressed",
        "webinar.email_06": "scheduled", "webinar.email_04": "suppressed", "family.email_04": "sent"}
    assert rows["family.email_01"].reason == "withdrawn: the lead left the journey (converted)"
