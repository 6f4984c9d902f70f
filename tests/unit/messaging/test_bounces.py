"""Reading delivery status notifications and ARF reports, VERP return paths, the guards' lines and the
warm-up ramp, DKIM configuration: pure, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from nurture.datafiles import DataFileError
from services.messaging.domain.bounces import (
    DELIVERABILITY_FILE,
    Counts,
    DeliverabilityPolicy,
    Rates,
    guard,
    load_deliverability,
    read_report,
    status_in,
    verp_address,
    verp_message,
)
from services.messaging.domain.dkim import DkimError, generate_key, load_signer

MID = "m" + "0123456789abcdef" * 2


def dsn(*blocks: str, returned: str = "") -> bytes:
    body = ("From: MAILER-DAEMON@mx.example\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\nUndeliverable.\r\n"
            "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n"
            + "\r\n".join(blocks) + "\r\n")
    if returned:
        body += f"--b\r\nContent-Type: message/rfc822\r\n\r\n{returned}\r\n"
    return (body + "--b--\r\n").encode()


def block(recipient: str, action: str, status: str) -> str:
    return f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n" \
           f"Diagnostic-Code: smtp; 550 {status} said no\r\n"


def test_a_dsn_reads_each_recipient_by_action_and_status_class() -> None:
    read = read_report(dsn(block("a@x.com", "failed", "5.1.1"), block("b@x.com", "failed", "4.2.2"),
                           block("c@x.com", "delayed", "4.4.1"), block("d@x.com", "delivered", "2.0.0"),
                           returned=f"From: us@b.example\r\nX-Nurture-Message: {MID}\r\nSubject: s\r\n\r\nhi"))
    assert read.problem == ""
    assert [(r.kind, r.recipient, r.status, r.message_id) for r in read.reports] == [
        ("hard_bounce", "a@x.com", "5.1.1", MID), ("soft_bounce", "b@x.com", "4.2.2", MID),
        ("delayed", "c@x.com", "4.4.1", MID)]
    assert "said no" in read.reports[0].detail


def test_what_is_not_a_report_is_a_problem_not_an_outcome() -> None:
    assert read_report(b"From: a@b\r\nSubject: out of office\r\n\r\nI am away").problem.startswith("not a report")
    assert read_report(dsn(block("d@x.com", "delivered", "2.0.0"))).reports == []
    assert "unknown report-type" in read_report(
        b'Content-Type: multipart/report; report-type=disposition-notification; boundary="b"\r\n\r\n--b--\r\n').problem


def arf(feedback_type: str) -> bytes:
    return ("MIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\nabuse report\r\n"
            f"--b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: {feedback_type}\r\n"
            "Version: 1\r\nOriginal-Rcpt-To: <Ana@Yahoo.com>\r\n\r\n"
            f"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nReturn-Path: <bounces+{MID}.abc@b.example>\r\n"
            f"X-Nurture-Message: {MID}\r\n\r\n--b--\r\n").encode()


def test_an_arf_abuse_report_is_a_complaint_and_not_spam_is_not() -> None:
    [report] = read_report(arf("abuse")).reports
    assert (report.kind, report.message_id) == ("complaint", MID)
    assert report.recipient == "ana@yahoo.com" and report.return_path == f"bounces+{MID}.abc@b.example"
    assert read_report(arf("not-spam")).reports == []
    assert "unknown Feedback-Type" in read_report(arf("nonsense")).problem


def test_verp_names_its_message_only_with_a_mac_of_ours() -> None:
    address = verp_address(MID, "s1", "b.example")
    assert address.startswith(f"bounces+{MID}.") and address.endswith("@b.example")
    assert len(address.partition("@")[0]) <= 64          # an RFC 5321 local part
    assert verp_message(address, ("s1",)) == MID
    assert verp_message(f"<{address.upper()}>", ("s1",)) == MID     # case and angle brackets
    assert verp_message(address, ("other", "s1")) == MID             # the previous secret, in a rotation
    assert verp_message(address, ("other",)) is None
    assert verp_message(address.replace(MID, "m" + "f" * 32), ("s1",)) is None
    assert verp_message("hello@b.example", ("s1",)) is None


LINES = DeliverabilityPolicy(min_sent=1000, warn=Rates(complaint_rate=0.001, hard_bounce_rate=0.02),
                             pause=Rates(complaint_rate=0.003, hard_bounce_rate=0.05))


def test_the_pause_line_is_inclusive_and_needs_enough_sends() -> None:
    assert guard(Counts(sent=1000, complaints=3), LINES).pause          # 0.3% exactly pauses
    assert not guard(Counts(sent=1000, complaints=2), LINES).pause
    assert guard(Counts(sent=1000, complaints=2), LINES).warnings        # 0.2% warns
    assert not guard(Counts(sent=1000, complaints=1), LINES).warnings    # 0.1% exactly does not warn
    assert guard(Counts(sent=1000, hard=50), LINES).pause
    assert not guard(Counts(sent=1000, hard=49), LINES).pause
    assert guard(Counts(sent=999, complaints=999), LINES) == guard(Counts(), LINES)   # under min_sent: nothing


def test_the_ramp_and_the_provider_map_come_from_the_file() -> None:
    policy = load_deliverability()
    assert policy.provider_of("x@GMAIL.com") == "gmail" and policy.provider_of("x@hotmail.com") == "microsoft"
    assert policy.provider_of("x@borderbridge.example") == "other"
    steps = sorted(policy.warmup.schedule, key=lambda s: s.day)
    assert policy.ramp_limit(1) == steps[0].limit
    assert policy.ramp_limit(steps[-1].day) == steps[-1].limit
    assert policy.ramp_limit(steps[-1].day + 1) == 0                     # the ramp is over: no limit
    assert policy.ramp_limit(8) == policy.ramp_limit(7)                  # between steps: the earlier one
    assert DELIVERABILITY_FILE.name == "deliverability.yaml"


def test_a_bad_deliverability_file_names_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "d.yaml"
    bad.write_text("window_days: 0\npause: {complaint_rate: 2}\nsurprise: 1\n")
    with pytest.raises(DataFileError) as err:
        load_deliverability(bad)
    text = str(err.value)
    assert "window_days" in text and "complaint_rate" in text and "surprise" in text


def test_dkim_configuration_problems_are_all_named(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pem", tmp_path / "b.pem"
    generate_key(a)
    generate_key(b)
    assert oct(a.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(DkimError) as err:
        load_signer({"x.example:s1": str(a), "x.example:s2": str(b), "noselector": str(a),
                     "y.example:s1": str(tmp_path / "missing.pem")}, {})
    text = str(err.value)
    assert "name the one that signs" in text and "noselector" in text and "missing.pem" in text
    with pytest.raises(DkimError, match="no key with selector"):
        load_signer({"x.example:s1": str(a)}, {"x.example": "s9"})
    signer = load_signer({"x.example:s1": str(a), "x.example:s2": str(b)}, {"x.example": "s2"})
    assert signer.key_for("x.example").selector == "s2" and signer.key_for("other.example").selector == "s2"
    assert load_signer({}, {}).sign(b"Subject: x\r\n\r\nbody", "x.example") == b"Subject: x\r\n\r\nbody"


def test_the_openssl_signature_is_byte_for_byte_dkimpys(tmp_path: Path) -> None:
    import hashlib

    import dkim
    from dkim.crypto import parse_pem_private_key

    from services.messaging.domain import dkim as ours

    generate_key(tmp_path / "k.pem")
    pem = (tmp_path / "k.pem").read_bytes()
    assert dkim.RSASSA_PKCS1_v1_5_sign is ours._openssl_rsa_sign     # what dkimpy's gen_header calls
    private = parse_pem_private_key(pem)
    for algorithm in (hashlib.sha256, hashlib.sha1):
        digest = algorithm(b"the canonicalized headers")
        assert ours._openssl_rsa_sign(digest, private) == ours.DKIMPY_RSA_SIGN(digest, private)
    message = (b"From: hello@x.example\r\nTo: ana@example.com\r\nSubject: hi\r\nMessage-ID: <1@x>\r\n"
               b"Date: Sun, 06 Dec 2026 08:00:00 +0000\r\n\r\nHello Ana\r\n")
    signer = load_signer({"x.example:s1": str(tmp_path / "k.pem")}, {})
    record = signer.keys[0].dns_txt.encode()
    assert dkim.verify(signer.sign(message, "x.example"), dnsfunc=lambda name, timeout=5: record)


@pytest.mark.parametrize(("text", "status"), [
    ("550 5.1.1 The email account that you tried to reach does not exist", "5.1.1"),
    ("smtp; 452 4.2.2 mailbox full", "4.2.2"),
    ("5.7.1 blocked", "5.7.1"),
    ("mailbox gone", ""),
    ("version 15.1.1.2 of the filter", ""),   # not a status code: part of a longer number
    ("", ""),
])
def test_a_webhooks_text_gives_the_enhanced_status_code_it_quotes(text: str, status: str) -> None:
    assert status_in(text) == status
