"""Messaging end to end in virtual time: a real service, a real SMTP sink, a recorded scoring servicer."""

from __future__ import annotations

import re
from datetime import UTC, timedelta

import grpc
import pytest

from nurture.api.common.v1 import common_pb2
from nurture.api.messaging.v1 import messaging_pb2
from nurture.bus import Publisher
from nurture.busmessage import BusMessage
from nurture.redisconn import connect
from services.messaging.clients import email_hash
from tests.integration.messaging.conftest import Mesh
from tests.integration.messaging.harness import make_lead

pytestmark = pytest.mark.anyio


async def test_send_delivers_once_with_headers_and_records(mesh: Mesh) -> None:
    mesh.scoring.add(make_lead("l1"))
    reply = await mesh.send("l1", "skilled_professional.email_01")
    assert reply.status == "scheduled"
    again = await mesh.send("l1", "skilled_professional.email_01")
    assert (again.status, again.message_id) == ("duplicate", reply.message_id)
    settled = await mesh.settle()
    assert settled.work_done >= 1
    [mail] = mesh.mails()
    assert mail["To"].addresses[0].addr_spec == "l1@example.com"
    assert mail["Message-ID"] == f"<{reply.message_id}@nurture.borderbridge.example>"
    assert mail["List-Unsubscribe"].startswith("<https://nurture.example/u/")
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = mail.get_body(("plain",)).get_content()
    assert "Hi Ana" in text and "nurse" in text and "Canada and Australia" in text
    assert "https://nurture.example/t/c/" in text
    assert "/t/o/" in mail.get_body(("html",)).get_content()
    [msg] = await mesh.messages("l1")
    assert msg.status == "sent" and msg.subject
    assert [k for k, _ in mesh.scoring.of_type("email_sent")] == [f"sent:{reply.message_id}"]
    timeline = await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="l1"), timeout=5)
    assert [i.type for i in timeline.items] == ["message_scheduled", "message_sent"]
    assert all(i.kind == "message" for i in timeline.items)
    # Nothing more to do, nothing sent twice.
    assert (await mesh.settle()).work_done == 0
    assert len(mesh.sink.messages()) == 1


async def test_a_leads_messages_are_listed_newest_first(mesh: Mesh) -> None:
    """The last new-user run's find: `GET /v1/leads/{id}/messages` listed the oldest first, and its limit
    kept the oldest. Newest first (docs/API.md), so the limit keeps the latest."""
    mesh.scoring.add(make_lead("l1"))
    templates = ["skilled_professional.email_01", "skilled_professional.email_02", "skilled_professional.email_03"]
    for template in templates:
        await mesh.send("l1", template)
        mesh.clock.advance(3600)
    assert [m.template for m in await mesh.messages("l1")] == templates[::-1]
    latest = await mesh.stub.ListMessages(messaging_pb2.ListMessagesRequest(lead_id="l1", limit=2), timeout=5)
    assert [m.template for m in latest.items] == templates[:0:-1]


async def test_a_leads_messages_are_listed_by_id(mesh: Mesh) -> None:
    """What the gateway asks to credit a posted open: only the named messages of that lead, by id (never a
    page of the lead's whole history); another lead's id or no message's is simply not listed."""
    mesh.scoring.add(make_lead("i1"))
    mesh.scoring.add(make_lead("i2"))
    ids = [(await mesh.send("i1", f"skilled_professional.email_0{n}")).message_id for n in (1, 2, 3)]
    other = (await mesh.send("i2", "skilled_professional.email_01")).message_id

    async def listed(lead_id: str, wanted: list[str], limit: int = 0) -> list[str]:
        reply = await mesh.stub.ListMessages(messaging_pb2.ListMessagesRequest(lead_id=lead_id, ids=wanted,
                                                                               limit=limit), timeout=5)
        return sorted(m.id for m in reply.items)

    assert await listed("i1", [ids[0], ids[2], other, "m-none"]) == sorted([ids[0], ids[2]])
    assert await listed("i2", ids) == []
    assert await listed("i1", [ids[1], ids[1]], limit=1) == [ids[1]]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await listed("i1", [f"m{n}" for n in range(1001)])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ids" in (err.value.details() or "")


async def test_consent_suppression_bounce_and_bad_template(mesh: Mesh) -> None:
    mesh.scoring.add(make_lead("nc", consent={"email": False}))
    mesh.scoring.add(make_lead("bad", email="nobody@reject.invalid"))
    mesh.scoring.add(make_lead("ok"))
    await mesh.send("nc", "family.email_01")
    await mesh.send("bad", "family.email_01")
    unknown = await mesh.send("ok", "family.email_99")
    assert unknown.status == "failed" and "unknown template" in unknown.reason
    await mesh.send("ok", "family.email_02")
    await mesh.settle()
    assert (await mesh.messages("nc"))[0].reason == "no email consent"
    bad = (await mesh.messages("bad"))[0]
    assert bad.status == "failed" and bad.reason.startswith("550")
    assert sorted(m.status for m in await mesh.messages("ok")) == ["failed", "sent"]  # the bad address blocked nothing
    assert mesh.scoring.of_type("email_hard_bounced")
    # Scoring heard the bounce and withdrew consent (the stub does what scoring does).
    assert mesh.scoring.leads["bad"]["consent"] == {"email": False}
    await mesh.send("bad", "webinar.email_01", category="transactional")
    await mesh.settle()
    later = {m.template: m for m in await mesh.messages("bad")}["webinar.email_01"]
    assert (later.status, later.reason) == ("suppressed", "no email consent")
    # Consent given again does not lift the bounce: the address stays suppressed for everything.
    mesh.scoring.update("bad", consent={"email": True})
    await mesh.send("bad", "webinar.email_02", category="transactional")
    await mesh.settle()
    again = {m.template: m for m in await mesh.messages("bad")}["webinar.email_02"]
    assert again.status == "suppressed" and again.reason == "address suppressed (hard_bounce, all)"


async def test_transient_failure_retries_with_backoff(mesh: Mesh) -> None:
    mesh.scoring.add(make_lead("tf", email="someone@tempfail.invalid"))
    await mesh.send("tf", "webinar.email_01", category="transactional")
    settled = await mesh.settle()
    [msg] = await mesh.messages("tf")
    assert msg.status == "scheduled" and msg.reason.startswith("retrying: 451")
    assert settled.has_next_due and settled.next_due_at.ToDatetime() > mesh.clock.now().replace(tzinfo=None)
    mesh.clock.set(settled.next_due_at.ToDatetime().replace(tzinfo=mesh.clock.now().tzinfo))
    await mesh.settle()
    [msg] = await mesh.messages("tf")
    assert (msg.status, msg.attempts) == ("sent", 2)
    assert len(mesh.sink.messages()) == 1


async def test_send_window_and_caps_defer_nurture_not_transactional(mesh: Mesh) -> None:
    # 09:00 UTC is 01:00 in Los Angeles: nurture waits for 08:00 there, transactional goes now.
    mesh.scoring.add(make_lead("la", timezone="America/Los_Angeles"))
    await mesh.send("la", "skilled_professional.email_02")
    await mesh.send("la", "webinar.email_02", category="transactional",
                    context={"starts_at": "2026-01-06T17:00:00Z", "webinar_title": "Canada 101"})
    settled = await mesh.settle()
    by_template = {m.template: m for m in await mesh.messages("la")}
    assert by_template["webinar.email_02"].status == "sent"
    deferred = by_template["skilled_professional.email_02"]
    assert deferred.status == "scheduled" and "daytime" in deferred.reason
    assert deferred.due_at.ToDatetime().isoformat() == "2026-01-05T16:00:00"
    assert settled.next_due_at.ToDatetime().isoformat() == "2026-01-05T16:00:00"
    # Caps: 3 nurture a day (each past the minimum gap after the one before); the 4th waits a day.
    mesh.scoring.add(make_lead("cap", timezone="UTC"))
    first = mesh.clock.now()
    for step in ("email_03", "email_04", "email_05", "email_06"):
        await mesh.send("cap", f"skilled_professional.{step}")
        await mesh.settle()
        mesh.clock.set(mesh.clock.now() + timedelta(hours=2))
    statuses = [m.status for m in await mesh.messages("cap")]
    assert statuses.count("sent") == 3 and statuses.count("scheduled") == 1
    held = [m for m in await mesh.messages("cap") if m.status == "scheduled"][0]
    assert "frequency cap" in held.reason
    # Exactly a day after the first (virtual time lands on whole days) the cap has freed: the held one
    # goes, and Settle returns instead of re-deferring it to the same instant forever.
    due = held.due_at.ToDatetime().replace(tzinfo=mesh.clock.now().tzinfo)
    assert due - first == timedelta(days=1)
    mesh.clock.set(due)
    await mesh.settle()
    assert [m.status for m in await mesh.messages("cap")].count("sent") == 4


async def test_two_nurture_emails_due_together_go_a_minimum_gap_apart(mesh: Mesh) -> None:
    # Day 14: the segment's re-engagement email and the re-engagement sequence's first fall due in the
    # same minute; the second waits the policy's gap (2 h), a transactional one does not.
    mesh.scoring.add(make_lead("gap"))
    now = mesh.clock.now()
    await mesh.send("gap", "re_engagement.email_01_skilled_professional")
    await mesh.send("gap", "re_engagement.email_01")
    await mesh.send("gap", "webinar.email_01", category="transactional",
                    context={"starts_at": "2026-01-09T17:00:00Z", "webinar_title": "Canada 101"})
    await mesh.settle()
    by_template = {m.template: m for m in await mesh.messages("gap")}
    assert by_template["re_engagement.email_01_skilled_professional"].status == "sent"
    assert by_template["webinar.email_01"].status == "sent"
    later = by_template["re_engagement.email_01"]
    assert later.status == "scheduled" and later.reason == "deferred: minimum gap after the previous nurture email"
    due = later.due_at.ToDatetime().replace(tzinfo=now.tzinfo)
    assert due - now == timedelta(hours=2)
    timeline = await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="gap"), timeout=5)
    assert any(i.type == "message_deferred" and "minimum gap" in i.summary for i in timeline.items)
    mesh.clock.set(due - timedelta(minutes=1))
    await mesh.settle()
    assert {m.template: m.status for m in await mesh.messages("gap")}["re_engagement.email_01"] == "scheduled"
    mesh.clock.set(due)
    await mesh.settle()
    assert {m.template: m.status for m in await mesh.messages("gap")}["re_engagement.email_01"] == "sent"
    assert len([m for m in mesh.mails() if "gap@example.com" in str(m["To"])]) == 3


async def test_a_budget_exempt_nurture_email_goes_past_the_gap_and_the_cap_and_counts_in_them(mesh: Mesh) -> None:
    # A cart reminder is timed to the hour (seed: "+1 Hour"): the journey step says `budget: exempt` and
    # the Send carries it. It goes 1 minute after another nurture email (no 2 h gap), and past a full day
    # cap; each exempt send still counts, so the next ordinary one waits the gap after it.
    mesh.scoring.add(make_lead("cx", timezone="UTC"))
    t0 = mesh.clock.now()
    await mesh.send("cx", "skilled_professional.email_03")
    await mesh.settle()
    mesh.clock.set(t0 + timedelta(minutes=1))
    await mesh.send("cx", "cart_abandonment.email_01", budget_exempt=True)
    await mesh.send("cx", "skilled_professional.email_04")
    await mesh.settle()
    by_template = {m.template: m for m in await mesh.messages("cx")}
    assert by_template["cart_abandonment.email_01"].status == "sent"
    held = by_template["skilled_professional.email_04"]
    assert (held.status, held.reason) == ("scheduled", "deferred: minimum gap after the previous nurture email")
    # The gap is counted from the exempt send (09:01), not from the email before it (09:00).
    assert held.due_at.ToDatetime().replace(tzinfo=UTC) == t0 + timedelta(hours=2, minutes=1)
    mesh.clock.set(t0 + timedelta(hours=2, minutes=1))
    await mesh.settle()
    assert {m.template: m.status for m in await mesh.messages("cx")}["skilled_professional.email_04"] == "sent"
    # Three nurture emails in the rolling day (the exempt one among them): an ordinary fourth waits for the
    # cap, an exempt one goes at once.
    mesh.clock.set(t0 + timedelta(hours=5))
    await mesh.send("cx", "skilled_professional.email_05")
    await mesh.send("cx", "cart_abandonment.email_02", budget_exempt=True)
    await mesh.settle()
    by_template = {m.template: m for m in await mesh.messages("cx")}
    assert (by_template["skilled_professional.email_05"].status,
            by_template["skilled_professional.email_05"].reason) == ("scheduled", "deferred: frequency cap reached")
    assert by_template["cart_abandonment.email_02"].status == "sent"
    assert len([m for m in mesh.mails() if "cx@example.com" in str(m["To"])]) == 4
    # The exemption is from the budget only: no consent still means no mail, and so does the night.
    mesh.scoring.add(make_lead("nx", consent={"email": False}, timezone="UTC"))
    mesh.scoring.add(make_lead("ny", timezone="America/Los_Angeles"))
    await mesh.send("nx", "cart_abandonment.email_01", budget_exempt=True)
    await mesh.send("ny", "cart_abandonment.email_01", budget_exempt=True)
    await mesh.settle()
    [refused] = await mesh.messages("nx")
    assert (refused.status, refused.reason) == ("suppressed", "no email consent")
    [night] = await mesh.messages("ny")
    assert night.status == "scheduled" and "daytime" in night.reason


async def test_tracking_and_one_click_unsubscribe(mesh: Mesh) -> None:
    mesh.scoring.add(make_lead("tr"))
    sent = await mesh.send("tr", "entrepreneur.email_01")
    await mesh.settle()
    [mail] = mesh.mails()
    text = mail.get_body(("plain",)).get_content()
    click = re.search(r"https://nurture\.example/t/c/(\S+)", text).group(1)  # type: ignore[union-attr]
    reply = await mesh.stub.Track(messaging_pb2.TrackRequest(token=click, kind="click"), timeout=5)
    assert reply.url.startswith("https://www.borderbridge.example/profile/business?")  # entrepreneur.email_01's page
    again = await mesh.stub.Track(messaging_pb2.TrackRequest(token=click, kind="click"), timeout=5)
    assert again.duplicate
    [(key, props)] = mesh.scoring.of_type("email_clicked")
    assert key == f"click:{sent.message_id}:0"
    assert props["template"] == "entrepreneur.email_01" and props["url"] == reply.url
    assert mesh.scoring.of_type("email_opened")  # a click implies an open
    # Tampered: the destination swapped, or the signature broken.
    payload, sig = click.split(".")
    for bad in (payload[:-2] + "xx." + sig, payload + "." + sig[::-1], "garbage"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await mesh.stub.Track(messaging_pb2.TrackRequest(token=bad, kind="click"), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # One-click unsubscribe from the List-Unsubscribe header takes effect at once.
    unsub = mail["List-Unsubscribe"].strip("<>").rsplit("/", 1)[1]
    done = await mesh.stub.Unsubscribe(messaging_pb2.UnsubscribeRequest(token=unsub, source="one_click"), timeout=5)
    assert (done.scope, done.already) == ("nurture", False)
    assert mesh.scoring.of_type("unsubscribed")
    await mesh.send("tr", "entrepreneur.email_02")
    await mesh.settle()
    last = {m.template: m for m in await mesh.messages("tr")}["entrepreneur.email_02"]
    assert last.status == "suppressed" and "unsubscribed" in last.reason
    # A transactional message of another kind still goes (the unsubscribe was from nurture mail).
    await mesh.send("tr", "webinar.email_01", category="transactional")
    await mesh.settle()
    assert {m.template: m for m in await mesh.messages("tr")}["webinar.email_01"].status == "sent"


async def test_bus_suppression_erasure_and_ab_report(mesh: Mesh) -> None:
    mesh.scoring.add(make_lead("sp"))
    redis = connect(mesh.settings)
    lead = make_lead("sp")
    await Publisher(redis, mesh.settings.bus_shards).publish([BusMessage.from_dict(m) for m in (
        {"id": "e-1", "lead_id": "sp", "type": "spam_reported", "properties": {}, "lead": lead,
         "occurred_at": "2026-01-05T09:00:00Z"},
        {"id": "e-2", "lead_id": "sp", "type": "stage_changed", "properties": {"old": "sql", "new": "customer"},
         "lead": lead, "occurred_at": "2026-01-05T09:00:00Z"},
    )])
    await redis.aclose()
    await mesh.settle()
    await mesh.send("sp", "family.email_03")
    await mesh.settle()
    assert "spam_report" in (await mesh.messages("sp"))[0].reason
    await mesh.send("sp", "retarget", channel="ads_audience", context={"audience": "family_ads"})
    await mesh.settle()
    aud = await mesh.stub.Audience(messaging_pb2.AudienceRequest(name="family_ads"), timeout=5)
    assert list(aud.lead_ids) == [] and list(aud.suppressed) == ["sp"]
    # Erasure keeps only the hashed suppression.
    removed = await mesh.admin.EraseLead(common_pb2.EraseLeadRequest(lead_id="sp", email_hash=email_hash(
        "sp@example.com")), timeout=5)
    assert removed.removed >= 1 and await mesh.messages("sp") == []
    # A/B: the split is stable and the report names variants.
    for i in range(6):
        mesh.scoring.add(make_lead(f"ab{i}"))
        await mesh.send(f"ab{i}", "skilled_professional.email_01")
    await mesh.settle()
    report = await mesh.stub.AbReport(messaging_pb2.AbReportRequest(template="skilled_professional.email_01"),
                                      timeout=5)
    assert {v.name for v in report.variants} == {"a", "b"} and sum(v.sent for v in report.variants) == 6
    assert not report.significant and report.explanation


async def test_scoring_down_defers_and_list_templates(mesh: Mesh) -> None:
    keys = (await mesh.stub.ListTemplates(messaging_pb2.ListTemplatesRequest(), timeout=5)).keys
    assert "skilled_professional.email_17" in keys and "triggers.pricing_page" in keys
    mesh.scoring.add(make_lead("dn"))
    mesh.scoring.down = True
    await mesh.send("dn", "trial_nurture.email_01")
    await mesh.settle()
    [msg] = await mesh.messages("dn")
    assert msg.status == "scheduled" and "waiting for scoring" in msg.reason
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.stub.Send(messaging_pb2.SendRequest(dedupe_key="x", lead_id="dn", channel="fax", template="t"),
                             timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_two_nurture_emails_due_at_one_instant_go_in_one_order_on_every_database(mesh: Mesh) -> None:
    # Two emails queued in the same instant for the same later instant: which one waits the 2 h minimum
    # gap was the database's scan order (insertion order on SQLite, heap order on PostgreSQL, which an
    # update of the row changes). Due mail is taken by due time, then creation time, then id: here the
    # ids decide, and the one queued second (the lower id) goes first on both databases.
    mesh.scoring.add(make_lead("tie", timezone="UTC"))
    t0 = mesh.clock.now()
    due = t0 + timedelta(hours=1)
    queued = []
    for step in ("email_04", "email_03"):
        reply = await mesh.stub.Send(messaging_pb2.SendRequest(
            dedupe_key=f"tie:skilled_professional:1:{step}:0", lead_id="tie", journey="skilled_professional",
            journey_version=1, step=step, channel="email", template=f"skilled_professional.{step}",
            not_before=due), timeout=5)
        queued.append(reply.message_id)
    assert queued[1] < queued[0], "the test needs the second queued to sort first by id"
    await mesh.settle()
    assert {m.status for m in await mesh.messages("tie")} == {"scheduled"}
    mesh.clock.set(due)
    await mesh.settle()
    by_template = {m.template: m for m in await mesh.messages("tie")}
    assert by_template["skilled_professional.email_03"].status == "sent"
    held = by_template["skilled_professional.email_04"]
    assert (held.status, held.reason) == ("scheduled", "deferred: minimum gap after the previous nurture email")
    assert held.due_at.ToDatetime().replace(tzinfo=UTC) == due + timedelta(hours=2)
