"""Messaging's engine on the in-process mesh (real Redis, SQLite, SMTP sink, a real loopback HTTP
server for webhooks; no gRPC): what a request must hold, and every outcome a message can have on each
channel (sent, suppressed, deferred, retried, failed, duplicate), with its reason and timeline line."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nurture import telemetry
from services.messaging.app.delivery import MAX_BATCH, InvalidRequest, SendInput, message_id_for
from services.messaging.clients import email_hash
from services.messaging.domain.catalog import Catalog, choose_variant
from services.messaging.storage import Message
from tests.integration.messaging.conftest import InProc
from tests.integration.messaging.harness import make_lead

pytestmark = pytest.mark.anyio


def request(**over: Any) -> SendInput:
    fields: dict[str, Any] = {"dedupe_key": "k1", "lead_id": "l1", "journey": "family", "journey_version": 1,
                              "step": "email_01", "channel": "email", "template": "family.email_01",
                              "category": "", "context_json": "{}", "not_before": None}
    fields.update(over)
    return SendInput(**fields)


async def send(inproc: InProc, **over: Any) -> Any:
    r = request(**over)
    return await inproc.engine.send(dedupe_key=r.dedupe_key, lead_id=r.lead_id, journey=r.journey,
                                    journey_version=r.journey_version, step=r.step, channel=r.channel,
                                    template=r.template, category=r.category, context_json=r.context_json,
                                    not_before=r.not_before)


def timeline(inproc: InProc, lead_id: str = "l1") -> list[tuple[str, str]]:
    return [(r.type, r.summary) for r in inproc.engine.store.timeline(lead_id, 50)]


async def row(inproc: InProc, template: str = "family.email_01", lead_id: str = "l1") -> Message:
    return (await inproc.messages(lead_id))[template]


@pytest.mark.parametrize(("over", "problem"), [
    ({"dedupe_key": ""}, "dedupe_key and lead_id are required"),
    ({"lead_id": ""}, "dedupe_key and lead_id are required"),
    ({"channel": "pigeon"}, "channel must be one of email, sms, in_app, webhook, ads_audience"),
    ({"context_json": "{oops"}, "context_json is not JSON: "),
    ({"context_json": "[1, 2]"}, "context_json must be a JSON object"),
    ({"category": "marketing"}, "category must be nurture or transactional"),
])
async def test_a_request_that_can_never_go_is_refused(inproc: InProc, over: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        await send(inproc, **over)
    assert str(err.value).startswith(problem)
    [result] = await inproc.engine.send_many([request(**over)])
    assert (result.message_id, result.status) == ("", "invalid") and result.reason.startswith(problem)
    assert await inproc.messages("l1") == {}


async def test_a_batch_answers_each_request_in_order_and_is_bounded(inproc: InProc) -> None:
    results = await inproc.engine.send_many([request(dedupe_key="a"), request(dedupe_key="b", channel="fax"),
                                             request(dedupe_key="a"), request(dedupe_key="c", template="nope.x")])
    assert [(r.message_id, r.status, r.reason) for r in results] == [
        (message_id_for("a"), "scheduled", ""),
        ("", "invalid", "channel must be one of email, sms, in_app, webhook, ads_audience"),
        (message_id_for("a"), "duplicate", "already scheduled"),
        (message_id_for("c"), "failed", "unknown template 'nope.x'")]
    assert await inproc.engine.send_many([]) == []
    with pytest.raises(InvalidRequest, match=f"at most {MAX_BATCH} sends, this one has {MAX_BATCH + 1}"):
        await inproc.engine.send_many([request(dedupe_key=f"k{n}") for n in range(MAX_BATCH + 1)])
    assert len(await inproc.engine.send_many([request(dedupe_key=f"k{n}") for n in range(MAX_BATCH)])) == MAX_BATCH


async def test_a_request_is_recorded_with_its_category_and_time(inproc: InProc) -> None:
    now = inproc.clock.now()
    later = now + timedelta(hours=3)
    first = await send(inproc, not_before=later)
    assert (first.message_id, first.status, first.reason) == (message_id_for("k1"), "scheduled", "")
    again = await send(inproc, not_before=later)
    assert (again.message_id, again.status, again.reason) == (first.message_id, "duplicate", "already scheduled")
    await send(inproc, dedupe_key="k2", template="webinar.email_01", not_before=now - timedelta(hours=1))
    await send(inproc, dedupe_key="k3", template="family.email_02", category="transactional")
    rows = await inproc.messages("l1")
    naive = now.replace(tzinfo=None)
    assert {t: (r.category, r.due_at, r.status) for t, r in rows.items()} == {
        "family.email_01": ("nurture", later.replace(tzinfo=None), "scheduled"),      # the template's category
        "webinar.email_01": ("transactional", naive, "scheduled"),                    # a past not_before: now
        "family.email_02": ("transactional", naive, "scheduled")}                     # the request's category
    assert rows["family.email_01"].attempts == 0 and rows["family.email_01"].sent_at is None
    # family.email_01 has an A/B split: the row keeps the lead's variant; a template without one has none.
    assert rows["family.email_01"].variant == choose_variant(Catalog().specs["family.email_01"], "l1") != ""
    assert rows["family.email_02"].variant == ""
    first_line = inproc.engine.store.timeline("l1", 1)[0]
    assert json.loads(first_line.details_json) == {
        "journey": "family", "version": 1, "step": "email_01", "template": "family.email_01", "channel": "email",
        "category": "nurture", "due_at": later.isoformat(), "reason": ""}
    assert timeline(inproc) == [("message_scheduled", f"family.email_01 queued for {later.isoformat()}"),
                                ("message_scheduled", "webinar.email_01 queued"),
                                ("message_scheduled", "family.email_02 queued")]


async def test_an_unknown_template_fails_at_once_and_says_so(inproc: InProc) -> None:
    result = await send(inproc, template="family.email_99")
    assert (result.status, result.reason) == ("failed", "unknown template 'family.email_99'")
    assert timeline(inproc) == [("message_failed", "family.email_99 failed: unknown template 'family.email_99'")]
    assert await inproc.settle() == 0


@pytest.mark.parametrize(("lead", "reason"), [
    (None, "lead not found"),
    (make_lead("l1", email="", timezone="UTC"), "no email address"),
])
async def test_mail_without_a_lead_or_an_address_is_suppressed(inproc: InProc, lead: dict[str, Any] | None,
                                                               reason: str) -> None:
    if lead:
        inproc.scoring.add(lead)
    await send(inproc)
    await inproc.settle()
    r = await row(inproc)
    assert (r.status, r.reason, r.attempts) == ("suppressed", reason, 0)
    assert ("message_suppressed", f"family.email_01 not sent: {reason}") in timeline(inproc)


async def test_mail_is_sent_with_its_timeline_line_and_fed_back(inproc: InProc) -> None:
    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    await send(inproc)
    await inproc.settle()
    r = await row(inproc)
    assert (r.status, r.reason, r.attempts) == ("sent", "", 1)
    assert r.sent_at == inproc.clock.now().replace(tzinfo=None)
    assert ("message_sent", f"email family.email_01 sent: {r.subject}") in timeline(inproc)
    [ev] = inproc.scoring.events
    assert (ev.type, ev.idempotency_key, json.loads(ev.properties_json)) == (
        "email_sent", f"sent:{r.id}", {"message_id": r.id, "journey": "family", "step": "email_01",
                                          "template": "family.email_01", "channel": "email",
                                          "variant": r.variant,
                                          # what analytics groups the message's events by
                                          "stage": "welcome", "topic": "family_relocation", "format": "newsletter"})


async def test_a_message_finishing_while_the_next_batch_is_read_is_not_sent_again(inproc: InProc) -> None:
    """Batches overlap: while one is on the wire the next is read. A message of the first batch is read
    again as `sending`, and its send finishes (recorded, out of the in-flight set) before that read is
    filtered: it must still be left out, not handled, and mailed, a second time."""
    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    engine, db = inproc.engine, inproc.engine.db

    class FinishingDuringReads:
        """The database, except that a read of due messages returns only once the batch in flight has
        finished: the interleaving a busy machine gives now and then, every time."""

        async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
            out = await db.run(fn, *args, **kwargs)
            if getattr(fn, "__name__", "") == "due_messages" and engine._inflight:
                read_while_sending = [m for m in out if m.id in engine._inflight]
                assert read_while_sending, "the read should find the in-flight message still sending"
                for _ in range(500):
                    if not engine._inflight:
                        break
                    await asyncio.sleep(0.01)
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(db, name)

    engine.db = FinishingDuringReads()
    try:
        await send(inproc)
        await inproc.settle()
    finally:
        engine.db = db
    r = await row(inproc)
    assert (r.status, r.attempts) == ("sent", 1)
    assert inproc.mails_to("l1@example.com") == 1


async def test_mail_outside_the_leads_daytime_is_deferred_to_its_morning(inproc: InProc) -> None:
    # The virtual clock starts at 09:00 UTC: 01:00 in Los Angeles, whose 08:00 is 16:00 UTC.
    inproc.scoring.add(make_lead("l1", timezone="America/Los_Angeles"))
    await send(inproc)
    await inproc.settle()
    r = await row(inproc)
    morning = inproc.clock.now().replace(hour=16, minute=0, second=0, microsecond=0)
    assert (r.status, r.reason) == ("scheduled", "deferred: outside daytime in America/Los_Angeles")
    assert r.due_at == morning.replace(tzinfo=None) and r.attempts == 0
    assert ("message_deferred", f"family.email_01 deferred to {morning.isoformat()}: outside daytime in "
            "America/Los_Angeles") in timeline(inproc)
    [line] = [x for x in inproc.engine.store.timeline("l1", 50) if x.type == "message_deferred"]
    assert json.loads(line.details_json) == {"template": "family.email_01", "until": morning.isoformat(),
                                                "why": "outside daytime in America/Los_Angeles"}


async def test_transactional_mail_goes_at_night(inproc: InProc) -> None:
    inproc.scoring.add(make_lead("l1", timezone="America/Los_Angeles"))
    await send(inproc, category="transactional")
    await inproc.settle()
    assert (await row(inproc)).status == "sent"


async def test_a_second_nurture_email_waits_for_the_gap(inproc: InProc) -> None:
    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    await send(inproc)
    await inproc.settle()
    await send(inproc, dedupe_key="k2", template="family.email_02")
    await inproc.settle()
    r = await row(inproc, "family.email_02")
    assert r.status == "scheduled" and r.reason.startswith("deferred: ")
    assert r.due_at == (inproc.clock.now() + timedelta(hours=2)).replace(tzinfo=None)


async def test_scoring_down_holds_every_message_for_30_seconds(inproc: InProc) -> None:
    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    await send(inproc)
    inproc.scoring.down = True
    await inproc.engine.process_due()
    r = await row(inproc)
    assert (r.status, r.reason, r.attempts) == ("scheduled", "waiting for scoring: UNAVAILABLE", 0)
    assert r.due_at == (inproc.clock.now() + timedelta(seconds=30)).replace(tzinfo=None)
    inproc.scoring.down = False
    assert await inproc.engine.flush_feedback() == 0
    inproc.clock.set(inproc.clock.now() + timedelta(seconds=30))
    await inproc.settle()
    assert (await row(inproc)).status == "sent"


async def test_feedback_waits_while_scoring_is_down(inproc: InProc) -> None:
    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    await send(inproc)
    await inproc.engine.process_due()
    assert (await row(inproc)).status == "sent"
    inproc.scoring.down = True
    assert await inproc.engine.flush_feedback() == 0
    assert inproc.scoring.events == []
    inproc.scoring.down = False
    assert await inproc.engine.flush_feedback() == 1
    assert await inproc.engine.flush_feedback() == 0
    assert [ev.type for ev in inproc.scoring.events] == ["email_sent"]


async def test_a_temporary_smtp_refusal_is_retried_after_the_backoff(inproc: InProc) -> None:
    inproc.scoring.add(make_lead("l1", email="l1@tempfail.invalid", timezone="UTC"))
    await send(inproc, category="transactional")
    await inproc.settle()
    r = await row(inproc)
    assert (r.status, r.attempts) == ("scheduled", 1) and r.reason.startswith("retrying: ")
    retry_at = inproc.clock.now() + timedelta(seconds=30)
    assert r.due_at == retry_at.replace(tzinfo=None)
    assert [s for t, s in timeline(inproc) if t == "message_retry"] == [
        f"family.email_01 will retry at {retry_at.isoformat()}: {r.reason.removeprefix('retrying: ')}"]
    inproc.clock.set(retry_at)
    await inproc.settle()
    assert ((await row(inproc)).status, (await row(inproc)).attempts) == ("sent", 2)


async def test_a_hard_bounce_fails_the_message_and_suppresses_the_address(inproc: InProc) -> None:
    from services.messaging.clients import email_hash

    inproc.scoring.add(make_lead("l1", email="l1@reject.invalid", timezone="UTC"))
    await send(inproc, category="transactional")
    await inproc.settle()
    r = await row(inproc)
    assert (r.status, r.attempts) == ("failed", 1)
    h = email_hash("l1@reject.invalid")
    assert inproc.engine.store.suppression_scopes([h]) == {h: {"all": "hard_bounce"}}
    from sqlalchemy import select

    from services.messaging.tables import suppressions

    with inproc.db.session() as session:
        assert [(r.scope, r.reason, r.source) for r in session.execute(select(suppressions))] == [
            ("all", "hard_bounce", "smtp")]
    [ev] = inproc.scoring.events
    assert (ev.type, ev.idempotency_key) == ("email_hard_bounced", f"bounce:{r.id}")
    assert json.loads(ev.properties_json)["reason"] == r.reason
    assert ("message_failed", f"family.email_01 failed: {r.reason}") in timeline(inproc)


# --- other channels ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("channel", "consent", "status", "reason"), [
    ("in_app", {"email": True}, "sent", ""),
    ("in_app", {"email": False}, "suppressed", "no email consent"),
    # The lead's own in-app consent, when it gave one, decides (it was read as its email consent).
    ("in_app", {"email": True, "in_app": False}, "suppressed", "no in_app consent"),
    ("in_app", {"email": False, "in_app": True}, "sent", ""),
    ("sms", {"email": True, "sms": True}, "failed", "no SMS gateway is configured"),
    ("sms", {"email": True}, "suppressed", "no sms consent"),
])
async def test_in_app_and_sms_messages(inproc: InProc, channel: str, consent: dict[str, bool], status: str,
                                       reason: str) -> None:
    inproc.scoring.add(make_lead("l1", timezone="UTC", consent=consent))
    await send(inproc, channel=channel, category="transactional")
    await inproc.settle()
    r = await row(inproc)
    assert (r.status, r.reason) == (status, reason)
    assert [ev.type for ev in inproc.scoring.events] == []   # only email feeds email_sent back
    if status == "sent":
        assert ("message_sent", f"{channel} family.email_01 sent: {r.subject}") in timeline(inproc)


@pytest.mark.parametrize(("context", "members"), [
    ({}, {"family.email_01": ["l1"]}),
    ({"audience": "family.decision"}, {"family.decision": ["l1"]}),
])
async def test_an_audience_step_adds_the_lead_without_consent(inproc: InProc, context: dict[str, Any],
                                                              members: dict[str, list[str]]) -> None:
    inproc.scoring.add(make_lead("l1", timezone="UTC", consent={}))
    await send(inproc, channel="ads_audience", context_json=json.dumps(context))
    await inproc.settle()
    assert (await row(inproc)).status == "sent"
    [line] = [x for x in inproc.engine.store.timeline("l1", 50) if x.type == "message_sent"]
    assert line.summary == "ads_audience family.email_01 sent"
    assert json.loads(line.details_json)["subject"] == ""
    for name, ids in members.items():
        assert inproc.engine.store.audience(name) == ids
    # The lead's hashed address is queued for the ad platform (consent is not asked for an audience).
    queued = inproc.engine.store.ads_due(inproc.clock.now(), 10)
    assert [(q.audience, q.lead_id, q.email_hash, q.op) for q in queued] == [
        (next(iter(members)), "l1", email_hash("l1@example.com"), "add")]
    await send(inproc, dedupe_key="k2", channel="ads_audience", template="family.email_02",
               context_json=json.dumps({**context, "action": "remove", "audience": next(iter(members))}))
    await inproc.settle()
    assert inproc.engine.store.audience(next(iter(members))) == []


async def test_an_audience_without_a_template_is_named_by_its_journey(inproc: InProc) -> None:
    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    result = await send(inproc, channel="ads_audience", template="")
    assert result.status == "scheduled"
    await inproc.settle()
    assert inproc.engine.store.audience("family") == ["l1"]


class Hook:
    """A real HTTP endpoint on loopback answering each POST with the next status of `answers`."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.server: asyncio.base_events.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:])
                   if k}
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        self.requests.append((headers, body))
        status = self.answers.pop(0) if self.answers else 200
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    h = Hook([])
    h.server = await asyncio.start_server(h.handle, "127.0.0.1", 0)
    yield h
    h.server.close()
    await h.server.wait_closed()


async def test_a_webhook_is_posted_signed_with_an_idempotency_key(inproc: InProc, hook: Hook) -> None:
    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    context = {"url": hook.url, "extra": "x"}
    await send(inproc, channel="webhook", category="transactional", context_json=json.dumps(context))
    await inproc.settle()
    r = await row(inproc)
    assert (r.status, r.attempts) == ("sent", 1)
    [(headers, body)] = hook.requests
    signature = hmac.new(b"test-secret", body, hashlib.sha256).hexdigest()
    assert headers["x-nurture-signature"] == f"sha256={signature}"
    assert (headers["idempotency-key"], headers["content-type"]) == (r.id, "application/json")
    sent = json.loads(body)
    assert {k: sent[k] for k in ("message_id", "lead_id", "journey", "step", "template", "context")} == {
        "message_id": r.id, "lead_id": "l1", "journey": "family", "step": "email_01",
        "template": "family.email_01", "context": context}
    assert sent["subject"] == r.subject and sent["text"]
    assert sent["lead"] == {"id": "l1", "email": "l1@example.com", "first_name": "Ana", "last_name": "Diaz",
                            "segment": "skilled_professional", "score": 30, "grade": "B", "lifecycle_stage": "lead"}


@pytest.mark.parametrize(("answer", "status", "reason"), [
    (500, "scheduled", "retrying: webhook answered 500"),
    (503, "scheduled", "retrying: webhook answered 503"),
    (429, "scheduled", "retrying: webhook answered 429"),
    (408, "scheduled", "retrying: webhook answered 408"),
    (425, "scheduled", "retrying: webhook answered 425"),
    (404, "failed", "webhook answered 404"),
    (499, "failed", "webhook answered 499"),
    (204, "sent", ""),
])
async def test_a_webhook_answer_decides_retry_or_failure(inproc: InProc, hook: Hook, answer: int, status: str,
                                                         reason: str) -> None:
    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    hook.answers = [answer]
    await send(inproc, channel="webhook", category="transactional", context_json=json.dumps({"url": hook.url}))
    await inproc.settle()
    r = await row(inproc)
    assert (r.status, r.reason, r.attempts) == (status, reason, 1)
    kind = {"scheduled": "message_retry", "failed": "message_failed", "sent": "message_sent"}[status]
    [line] = [x for x in inproc.engine.store.timeline("l1", 50) if x.type == kind]
    details = json.loads(line.details_json)
    assert {k: details[k] for k in ("message_id", "journey", "step", "template", "channel")} == {
        "message_id": r.id, "journey": "family", "step": "email_01", "template": "family.email_01",
        "channel": "webhook"}
    if status == "failed":
        assert details["code"] == answer
    else:
        assert details["attempts"] == 1


@pytest.mark.parametrize("url", ["", "ftp://example.com/x", "/relative", "javascript:alert(1)"])
async def test_a_webhook_needs_an_http_url(inproc: InProc, url: str) -> None:
    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    await send(inproc, channel="webhook", category="transactional", context_json=json.dumps({"url": url}))
    await inproc.settle()
    r = await row(inproc)
    assert (r.status, r.reason) == ("failed", "webhook needs context.url (http or https)")
    [line] = [x for x in inproc.engine.store.timeline("l1", 50) if x.type == "message_failed"]
    assert json.loads(line.details_json)["code"] == 0


async def test_an_unreachable_webhook_is_retried_until_the_last_attempt(inproc: InProc) -> None:
    from nurture.ports import free_port

    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    url = f"http://127.0.0.1:{free_port()}/hook"
    await send(inproc, channel="webhook", category="transactional", context_json=json.dumps({"url": url}))
    waits = []
    for attempt in range(1, inproc.engine.policy.max_attempts + 1):
        await inproc.settle()
        r = await row(inproc)
        assert r.attempts == attempt
        if attempt < inproc.engine.policy.max_attempts:
            assert r.status == "scheduled" and r.reason.startswith("retrying: webhook: ConnectError")
            due = r.due_at.replace(tzinfo=inproc.clock.now().tzinfo)
            waits.append(int((due - inproc.clock.now()).total_seconds()))
            inproc.clock.set(due)
    assert waits == [30, 60, 120, 240, 480, 960, 1920][: inproc.engine.policy.max_attempts - 1]
    assert r.status == "failed"
    assert r.reason.startswith(f"gave up after {inproc.engine.policy.max_attempts} attempts: webhook: ConnectError")


def mails(inproc: InProc) -> list[Any]:
    import email
    from email import policy

    return [email.message_from_bytes(p.read_bytes(), policy=policy.default) for p in inproc.sink.messages()]


async def test_an_email_carries_its_headers_and_signed_tracking_links(inproc: InProc) -> None:
    import re

    from services.messaging.domain.catalog import Catalog
    from services.messaging.domain.mime import message_id_header

    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    await send(inproc)
    await inproc.settle()
    r = await row(inproc)
    [mail] = mails(inproc)
    assert mail["Message-ID"] == message_id_header(r.id)
    assert mail["X-Nurture-Template"] == "family.email_01"
    assert (mail["From"].addresses[0].addr_spec, mail["From"].addresses[0].display_name) == (
        Catalog().sender_address, Catalog().sender_name)
    assert (mail["To"].addresses[0].addr_spec, mail["To"].addresses[0].display_name) == ("l1@example.com",
                                                                                        "Ana Diaz")
    assert mail["Subject"] == r.subject and "Reply-To" not in mail
    assert mail["X-Nurture-Category"] == "nurture"
    html = mail.get_body(("html",)).get_content()
    signer = inproc.engine.signer
    [pixel] = re.findall(r"https://nurture\.example/t/o/([A-Za-z0-9_.-]+)", html)
    opened = signer.verify(pixel, kind="open")
    assert (opened.message_id, opened.lead_id) == (r.id, "l1")
    clicks = re.findall(r"https://nurture\.example/t/c/([A-Za-z0-9_.-]+)", html)
    assert clicks and all(signer.verify(c, kind="click").message_id == r.id for c in clicks)
    assert {signer.verify(c, kind="click").link for c in clicks} >= {0}
    unsubscribe = re.findall(r"https://nurture\.example/u/([A-Za-z0-9_.-]+)", mail["List-Unsubscribe"])
    assert [signer.verify(u, kind="unsubscribe").lead_id for u in unsubscribe] == ["l1"]
    in_body = re.findall(r"https://nurture\.example/u/([A-Za-z0-9_.-]+)", html)
    assert in_body and {(signer.verify(u, kind="unsubscribe").message_id, signer.verify(u, kind="unsubscribe").lead_id)
                        for u in in_body} == {(r.id, "l1")}


async def test_an_email_that_speaks_for_the_owner_comes_from_them(inproc: InProc) -> None:
    inproc.scoring.add(make_lead("l1", timezone="UTC", first_name="", last_name="Diaz",
                                 attributes={"sales_owner": "ana.costa@borderbridge.example"}))
    await send(inproc, template="high_engagement.email_05", journey="high_engagement", step="email_05")
    await inproc.settle()
    [mail] = mails(inproc)
    assert mail["From"].addresses[0].addr_spec == "ana.costa@borderbridge.example"
    assert mail["Reply-To"].addresses[0].addr_spec == "ana.costa@borderbridge.example"
    assert mail["To"].addresses[0].display_name == "Diaz"


async def test_the_consent_a_send_was_decided_with_is_logged_when_it_changes(inproc: InProc) -> None:
    inproc.scoring.add(make_lead("l1", timezone="UTC", consent={"email": True, "sms": False}))
    await send(inproc, category="transactional")
    await send(inproc, dedupe_key="k2", template="family.email_02", category="transactional")
    await inproc.settle()
    await send(inproc, dedupe_key="k3", template="family.email_03", category="transactional")
    await inproc.settle()
    inproc.scoring.update("l1", consent={"email": False})
    await send(inproc, dedupe_key="k4", template="family.email_04", category="transactional")
    # Queued a second later, so taken after the email (at one instant, the lower id goes first).
    inproc.clock.set(inproc.clock.now() + timedelta(seconds=1))
    await send(inproc, dedupe_key="k5", template="family.email_05", channel="sms", category="transactional")
    await inproc.settle()
    history = inproc.engine.store.consent_history("l1")
    assert [(r.channel, r.granted, r.source) for r in history] == [
        ("email", True, "scoring:lead"), ("email", False, "scoring:lead"), ("sms", False, "scoring:lead")]
    first = json.loads(history[0].evidence_json)
    assert first["consent"] == {"email": True, "sms": False} and first["message_id"] in (
        message_id_for("k1"), message_id_for("k2"))
    assert history[1].at == inproc.clock.now().replace(tzinfo=None)


async def test_the_worker_delivers_what_comes_in_and_feeds_it_back(inproc: InProc) -> None:
    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    worker = asyncio.create_task(inproc.engine.run())
    try:
        await send(inproc, category="transactional")
        inproc.engine.wake.set()                     # what Send does on a real clock
        for _ in range(300):
            if [ev.type for ev in inproc.scoring.events] == ["email_sent"]:
                break
            await asyncio.sleep(0.05)
        assert (await row(inproc)).status == "sent"
        assert [ev.type for ev in inproc.scoring.events] == ["email_sent"]
    finally:
        worker.cancel()
        await asyncio.wait([worker], timeout=5)
    assert worker.cancelled()


async def test_feedback_scoring_refuses_is_logged_and_not_sent_again(inproc: InProc,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    inproc.scoring.refuse["email_sent"] = ("lead_not_found", "no such lead")
    await send(inproc)
    await inproc.settle()
    mid = (await row(inproc)).id
    assert inproc.scoring.events == []
    assert ("WARNING", f"scoring refused email_sent sent:{mid}: no such lead") in [
        (r.levelname, r.getMessage()) for r in caplog.records]
    inproc.scoring.refuse.clear()
    assert await inproc.engine.flush_feedback() == 0        # settled: a refusal is not retried


async def test_a_message_id_is_stable_per_dedupe_key() -> None:
    import re

    assert message_id_for("l1:family:1:email_01:1.1") == message_id_for("l1:family:1:email_01:1.1")
    assert message_id_for("a") != message_id_for("b")
    assert re.fullmatch(r"m[0-9a-f]{32}", message_id_for("l1:family:1:email_01:1.1"))


async def test_a_template_that_fails_to_render_fails_its_message_and_says_why(inproc: InProc) -> None:
    # A published version that passes validation (ctx is a variable that exists) but fails for a send
    # whose context lacks what it reads: StrictUndefined refuses to send a blank.
    templates = inproc.engine.templates
    live = await templates.compiled("family.email_01")
    content = {**live.content.as_dict(), "subject": "{{ ctx.offer.title }}"}
    version = await templates.put_draft("family.email_01", content)
    await templates.publish("family.email_01", version)
    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    await send(inproc)
    await inproc.settle()
    r = await row(inproc)
    assert r.status == "failed" and r.reason.startswith("template 'family.email_01' failed to render")
    assert ("message_failed", r.reason) in timeline(inproc)
    assert inproc.mails_to("l1@example.com") == 0


async def test_a_capped_email_lands_in_the_window_of_the_policy_in_force(inproc: InProc) -> None:
    # The policy's window ends at 12:00: the second email, 2 h after the first (11:30), would fall at
    # 13:30, after the window: it goes at the next window's start, not at 13:30.
    from dataclasses import replace
    from datetime import time

    inproc.engine.policy = replace(inproc.engine.policy, window_end=time(12, 0))
    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    day = inproc.clock.now().replace(hour=11, minute=30, second=0, microsecond=0)
    inproc.clock.set(day)
    await send(inproc)
    await inproc.settle()
    await send(inproc, dedupe_key="k2", template="family.email_02")
    await inproc.settle()
    r = await row(inproc, "family.email_02")
    assert r.status == "scheduled" and r.reason.startswith("deferred: ")
    assert r.due_at == (day + timedelta(days=1)).replace(hour=8, minute=0, tzinfo=None)


async def test_an_https_webhook_is_attempted_not_refused(inproc: InProc) -> None:
    from nurture.ports import free_port

    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    url = f"https://127.0.0.1:{free_port()}/hook"     # nothing listens: the attempt fails and is retried
    await send(inproc, channel="webhook", category="transactional", context_json=json.dumps({"url": url}))
    await inproc.settle()
    r = await row(inproc)
    assert (r.status, r.attempts) == ("scheduled", 1) and r.reason.startswith("retrying: webhook: ")


async def test_a_due_batch_is_one_trace_from_its_checks_to_its_outcome(inproc: InProc,
                                                                       spans: InMemorySpanExporter) -> None:
    """The worker's batch is a trace of its own (`messages due`): the lead's checks and the SMTP
    delivery's outcome written back are in it. Without it nothing of a delivery was recorded (SQL is
    traced only inside a recorded span)."""
    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    await send(inproc)
    spans.clear()
    await inproc.engine.process_due()
    assert (await row(inproc)).status == "sent"
    finished = spans.get_finished_spans()
    batches = [s for s in finished if s.name == "messages due"]
    assert len(batches) == 1 and batches[0].parent is None
    same = [s for s in finished if s.context.trace_id == batches[0].context.trace_id]
    statements = [st for s in same if s.name == "sql transaction" for st in (s.attributes or {})["db.statements"]]
    # The outcome written back after SMTP (its log line and the feedback for scoring), not only the checks.
    assert "INSERT messaging_message_log" in statements and "INSERT messaging_feedback" in statements, statements
    assert all(s.end_time <= batches[0].end_time for s in same), "the batch's span ends after its outcome"


async def test_a_feedback_batch_is_a_trace_of_its_own(inproc: InProc, spans: InMemorySpanExporter) -> None:
    """The events messaging reports back to scoring (here `email_sent`) leave in a trace of their own
    (`feedback to scoring`) with the write-back that marks them sent. Without it nothing of the flush was
    recorded: SQL is traced only inside a recorded span."""
    inproc.scoring.add(make_lead("l1", timezone="UTC"))
    await send(inproc)
    await inproc.engine.process_due()
    spans.clear()
    assert await inproc.engine.flush_feedback() == 1
    finished = spans.get_finished_spans()
    flushes = [s for s in finished if s.name == "feedback to scoring"]
    assert len(flushes) == 1 and flushes[0].parent is None, [s.name for s in finished]
    assert (flushes[0].attributes or {})[telemetry.LEAD_ID] == "l1"
    same = [s for s in finished if s.context.trace_id == flushes[0].context.trace_id]
    statements = [st for s in same if s.name == "sql transaction" for st in (s.attributes or {})["db.statements"]]
    assert any(st.startswith("UPDATE messaging_feedback") for st in statements), statements
