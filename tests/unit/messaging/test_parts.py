"""Tokens, policy, MIME and the A/B statistics: pure parts of the messaging service."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

import pytest

from services.messaging.domain import abtest, mime
from services.messaging.domain.policy import backoff, next_window
from services.messaging.domain.tokens import Signer, Token, TokenError


def test_tokens_round_trip_and_reject_tampering() -> None:
    signer = Signer("s3cret")
    token = Token("click", "m1", "l1", url="https://www.borderbridge.example/x?a=1", link=2)
    text = signer.sign(token)
    assert signer.verify(text, kind="click") == token
    head, sig = text.split(".")
    for bad in (head + "." + sig[:-1] + ("A" if sig[-1] != "A" else "B"), head[:-1] + "x." + sig, "", "a.b", head):
        with pytest.raises(TokenError):
            signer.verify(bad)
    with pytest.raises(TokenError):
        Signer("other").verify(text)
    with pytest.raises(TokenError, match="not a open"):
        signer.verify(text, kind="open")


def test_send_window_in_lead_time_zone() -> None:
    at = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    assert next_window(at, "Asia/Kolkata") is None                                # 14:30 there
    assert next_window(at, "America/Los_Angeles") == datetime(2026, 1, 5, 16, 0, tzinfo=UTC)  # 01:00 → 08:00
    late = datetime(2026, 1, 5, 21, 0, tzinfo=UTC)                                # 21:00 UTC
    assert next_window(late, "UTC") == datetime(2026, 1, 6, 8, 0, tzinfo=UTC)
    assert next_window(at, "Not/AZone") is None                                   # falls back to UTC


def test_backoff_grows_and_caps() -> None:
    assert [backoff(n).total_seconds() for n in (1, 2, 3)] == [30, 60, 120]
    assert backoff(30) == timedelta(hours=1)


def test_mime_has_stable_id_and_one_click_headers() -> None:
    env = mime.Envelope(message_id="m42", sender_name="BorderBridge", sender_address="hello@b.example",
                        to_address="a@example.com", to_name="Ána Díaz", subject="Olá, Ána — welcome",
                        text="plain ✓\nline", html="<p>html ✓</p>", date=datetime(2026, 1, 5, tzinfo=UTC),
                        unsubscribe_url="https://n.example/u/tok")
    msg = message_from_bytes(mime.build(env), policy=policy.default)
    assert msg["Message-ID"] == "<m42@nurture.borderbridge.example>"
    assert msg["Subject"] == "Olá, Ána — welcome"
    assert msg["List-Unsubscribe"] == "<https://n.example/u/tok>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_body(("plain",)).get_content().startswith("plain ✓")  # type: ignore[union-attr]
    assert "html ✓" in msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert mime.build(env) == mime.build(env)


def test_ab_report_significance() -> None:
    even = abtest.report([abtest.VariantStats("a", 100, 40, 5), abtest.VariantStats("b", 100, 42, 6)])
    assert not even.significant and even.winner == ""
    clear = abtest.report([abtest.VariantStats("a", 2000, 800, 100), abtest.VariantStats("b", 2000, 820, 180)])
    assert clear.significant and clear.winner == "b" and clear.p_value < 0.001 and clear.metric == "click_rate"
    z, p = abtest.two_proportion_z(50, 100, 50, 100)
    assert (z, p) == (0.0, 1.0)


def test_rotation_signs_with_the_current_secret_and_still_verifies_the_previous() -> None:
    token = Token("unsubscribe", "m1", "l1")
    old_link = Signer("old-secret").sign(token)
    rotated = Signer("new-secret", previous="old-secret")
    assert rotated.verify(old_link, kind="unsubscribe") == token
    new_link = rotated.sign(token)
    assert new_link != old_link and Signer("new-secret").verify(new_link) == token
    with pytest.raises(TokenError):
        Signer("new-secret").verify(old_link)  # previous secret dropped: its links stop verifying
    with pytest.raises(TokenError):
        rotated.verify(Signer("never-ours").sign(token))


def test_no_secret_no_signer() -> None:
    with pytest.raises(ValueError, match="NURTURE_SECRET"):
        Signer("")
