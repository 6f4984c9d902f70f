"""Deliverability on the real messaging service (gRPC, virtual clock, a real aiosmtpd sink): DKIM
signatures that verify against the published record, during a rotation too; VERP return paths; the
bounce receiver (a real SMTP listener) reading DSNs and ARF reports; the guards pausing a provider."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import dkim
import pytest

from nurture.api.common.v1 import common_pb2
from nurture.api.messaging.v1 import deliverability_pb2, deliverability_pb2_grpc
from services.messaging.domain.dkim import generate_key
from tests.conftest import mesh_channel
from tests.integration.messaging.conftest import Mesh, running_mesh
from tests.integration.messaging.harness import make_lead

pytestmark = pytest.mark.anyio
DOMAIN = "borderbridge.example"


def _keys(tmp_path: Path, *selectors: str) -> dict[str, str]:
    out = {}
    for selector in selectors:
        path = tmp_path / f"{selector}.pem"
        generate_key(path)
        out[f"{DOMAIN}:{selector}"] = str(path)
    return out


async def _deliverability(m: Mesh) -> deliverability_pb2.DeliverabilityReply:
    ch = mesh_channel(m.running.address)
    try:
        return await deliverability_pb2_grpc.DeliverabilityStub(ch).Get(deliverability_pb2.DeliverabilityRequest(),
                                                                        timeout=5)
    finally:
        await ch.close()


def _verify(raw: bytes, published: dict[str, str]) -> bool:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return published.get(name.decode().rstrip("."), "").encode()
    return bool(dkim.verify(raw, dnsfunc=dnsfunc))


def _raw_mails(m: Mesh) -> list[bytes]:
    # The sink stores the message behind one line of its own (the envelope recipients).
    return [p.read_bytes().split(b"\r\n", 1)[1] for p in m.sink.messages()]


async def test_mail_is_signed_and_verifies_against_the_published_key_during_a_rotation(settings, tmp_path) -> None:
    keys = _keys(tmp_path, "s2025", "s2026")
    async with running_mesh(settings, tmp_path, dkim_keys=keys, dkim_selectors={DOMAIN: "s2026"}) as m:
        m.scoring.add(make_lead("ana", timezone="UTC"))
        await m.send("ana", "lead_magnet.email_01")
        await m.settle()
        reply = await _deliverability(m)
        # The signing key first, the old one still published.
        assert [(r.selector, r.signing) for r in reply.dkim] == [("s2026", True), ("s2025", False)]
        assert all(r.dns_txt.startswith("v=DKIM1; k=rsa; p=") for r in reply.dkim)
        published = {f"{r.selector}._domainkey.{r.domain}": r.dns_txt for r in reply.dkim}
        [raw] = _raw_mails(m)
        assert b"s=s2026" in raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
        assert _verify(raw, published)
        # Only the old selector published: the new signature does not verify (the check can fail).
        assert not _verify(raw, {k: v for k, v in published.items() if k.startswith("s2025")})
        # A changed body no longer verifies.
        assert not _verify(raw.replace(b"Here is your resource", b"Here is your resourcf"), published)


async def _bounce(m: Mesh, return_path: str, report: bytes) -> None:
    reply = await _deliverability(m)
    host, port = reply.bounce_smtp.rsplit(":", 1)

    def send() -> None:
        with smtplib.SMTP(host, int(port), timeout=10) as smtp:
            smtp.sendmail("", [return_path], report)
    # From a thread: the listener serves on this test's own event loop.
    await asyncio.to_thread(send)


def _dsn(recipient: str, status: str, action: str = "failed") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.gmail.com\r\nTo: bounces@x\r\nSubject: Delivery Status Notification\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.gmail.com\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {status[0]}50 {status} mailbox problem\r\n\r\n"
        "--b1--\r\n").encode()


def _arf(recipient: str, message_id: str, return_path: str) -> bytes:
    return (
        "From: fbl@yahoo.com\r\nTo: fbl@borderbridge.example\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b2"\r\n\r\n'
        "--b2\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n"
        "--b2\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: abuse\r\nUser-Agent: yahoo-fbl/1.0\r\nVersion: 1\r\nOriginal-Rcpt-To: {recipient}\r\n\r\n"
        "--b2\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Return-Path: <{return_path}>\r\nFrom: hello@borderbridge.example\r\nX-Nurture-Message: {message_id}\r\n"
        "Subject: hi\r\n\r\n"
        "--b2--\r\n").encode()


def _return_path(m: Mesh, address: str) -> str:
    for path in m.sink.messages():
        raw = path.read_bytes()
        if address.encode() in raw.split(b"\r\n", 1)[0]:
            message_id = raw.split(b"\r\nMessage-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
            return m.sink.handler.envelopes[message_id]
    raise AssertionError(f"no mail to {address}")


async def test_a_hard_bounce_by_mail_suppresses_the_address_and_withdraws_consent(settings, tmp_path) -> None:
    async with running_mesh(settings, tmp_path, dkim_keys=_keys(tmp_path, "s1")) as m:
        m.scoring.add(make_lead("ana", email="ana@gmail.com", timezone="UTC"))
        await m.send("ana", "lead_magnet.email_01")
        await m.settle()
        [item] = await m.messages("ana")
        return_path = _return_path(m, "ana@gmail.com")
        assert return_path == m.sink.handler.envelopes[f"<{item.id}@nurture.borderbridge.example>"]
        local, _, domain = return_path.partition("@")
        assert local.startswith(f"bounces+{item.id}.") and domain == DOMAIN
        # A forged return path (a wrong MAC) is refused at RCPT.
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            await _bounce(m, f"bounces+{item.id}.000000000000@{DOMAIN}", _dsn("ana@gmail.com", "5.1.1"))
        await _bounce(m, return_path, _dsn("ana@gmail.com", "5.1.1"))
        await _bounce(m, return_path, _dsn("ana@gmail.com", "5.1.1"))   # retransmitted: counts once
        await m.settle()
        timeline = await m.admin.Timeline(common_pb2.TimelineRequest(lead_id="ana", limit=100), timeout=5)
        assert [t.type for t in timeline.items].count("message_bounced") == 1
        [after] = await m.messages("ana")
        assert after.status == "failed" and "5.1.1" in after.reason
        assert [k for k, _ in m.scoring.of_type("email_hard_bounced")] == [f"bounce:{item.id}"]
        assert m.scoring.leads["ana"]["consent"]["email"] is False   # withdrawn at scoring
        # The address is suppressed at once: even transactional mail does not go to it again.
        m.scoring.update("ana", consent={"email": True})
        await m.send("ana", "lead_magnet.email_01", key="again")
        await m.settle()
        again = [i for i in await m.messages("ana") if i.id != item.id][0]
        assert again.status == "suppressed" and "hard_bounce" in again.reason
        rates = (await _deliverability(m)).rates
        assert [(r.domain, r.provider, r.sent, r.bounced_hard) for r in rates] == [(DOMAIN, "gmail", 1, 1)]


async def test_a_soft_bounce_retries_then_suppresses_and_a_complaint_suppresses(settings, tmp_path) -> None:
    async with running_mesh(settings, tmp_path, dkim_keys=_keys(tmp_path, "s1")) as m:
        m.scoring.add(make_lead("bo", email="bo@yahoo.com", timezone="UTC"))
        await m.send("bo", "lead_magnet.email_01")
        await m.settle()
        [item] = await m.messages("bo")
        return_path = _return_path(m, "bo@yahoo.com")
        await _bounce(m, return_path, _dsn("bo@yahoo.com", "4.2.2"))
        [after] = await m.messages("bo")
        assert after.status == "scheduled" and "soft bounce" in after.reason     # retried later
        # Two more soft bounces of the address within the window: suppressed (policy: 3).
        await _bounce(m, return_path, _dsn("bo@yahoo.com", "4.2.2"))
        await _bounce(m, return_path, _dsn("bo@yahoo.com", "4.2.2"))
        await m.settle()
        [after] = await m.messages("bo")
        assert after.status == "failed"
        assert [k for k, _ in m.scoring.of_type("email_hard_bounced")] == [f"bounce:{item.id}"]

        m.scoring.add(make_lead("cy", email="cy@yahoo.com", timezone="UTC"))
        await m.send("cy", "lead_magnet.email_01")
        await m.settle()
        [cy] = await m.messages("cy")
        # A report at the feedback-loop address whose returned message lacks our signed return path
        # (anyone can mail fbl@, and message ids are derived from guessable keys) changes nothing.
        await _bounce(m, f"fbl@{DOMAIN}", _arf("cy@yahoo.com", cy.id, f"bounces+{cy.id}.000000000000@{DOMAIN}"))
        await _bounce(m, f"fbl@{DOMAIN}", _arf("cy@yahoo.com", cy.id, "someone@else.example"))
        await m.settle()
        assert m.scoring.of_type("spam_reported") == []
        await _bounce(m, f"fbl@{DOMAIN}", _arf("cy@yahoo.com", cy.id, _return_path(m, "cy@yahoo.com")))
        await m.settle()
        assert [k for k, _ in m.scoring.of_type("spam_reported")] == [f"complaint:{cy.id}"]
        timeline = await m.admin.Timeline(common_pb2.TimelineRequest(lead_id="cy", limit=100), timeout=5)
        assert "message_complaint" in [t.type for t in timeline.items]
        bo = await m.admin.Timeline(common_pb2.TimelineRequest(lead_id="bo", limit=100), timeout=5)
        assert [t.type for t in bo.items].count("message_bounced") == 3
        # The complaint suppressed cy's address at once.
        m.scoring.update("cy", consent={"email": True})
        await m.send("cy", "lead_magnet.email_01", key="again")
        await m.settle()
        again = [i for i in await m.messages("cy") if i.id != cy.id][0]
        assert again.status == "suppressed" and "spam_report" in again.reason


async def test_a_webhook_bounce_names_the_status_code_its_text_quotes_on_the_timeline(settings, tmp_path) -> None:
    """A provider's webhook has no status field: the timeline takes the enhanced status code its reason
    quotes (SendGrid's "550 5.1.1 ..."), and says only the kind when there is none (not "(hard, )")."""
    async with running_mesh(settings, tmp_path) as m:
        for lead in ("ana", "bo"):
            m.scoring.add(make_lead(lead, email=f"{lead}@gmail.com", timezone="UTC"))
            await m.send(lead, "lead_magnet.email_01")
        await m.settle()
        [ana] = await m.messages("ana")
        [bo] = await m.messages("bo")
        ch = mesh_channel(m.running.address)
        try:
            reply = await deliverability_pb2_grpc.DeliverabilityStub(ch).ReportEvents(
                deliverability_pb2.ReportEventsRequest(source="webhook:sendgrid", events=[
                    deliverability_pb2.DeliveryEvent(message_id=ana.id, recipient="ana@gmail.com", kind="hard_bounce",
                                                     detail="550 5.1.1 The email account does not exist"),
                    deliverability_pb2.DeliveryEvent(message_id=bo.id, recipient="bo@gmail.com", kind="hard_bounce",
                                                     detail="mailbox gone")]), timeout=5)
        finally:
            await ch.close()
        assert reply.applied == 2 and list(reply.ignored) == []
        await m.settle()
        summaries = {}
        for lead in ("ana", "bo"):
            timeline = await m.admin.Timeline(common_pb2.TimelineRequest(lead_id=lead, limit=100), timeout=5)
            summaries[lead] = [t.summary for t in timeline.items if t.type == "message_bounced"]
        assert summaries == {
            "ana": ["lead_magnet.email_01 bounced (hard, 5.1.1): 550 5.1.1 The email account does not exist"],
            "bo": ["lead_magnet.email_01 bounced (hard): mailbox gone"]}
