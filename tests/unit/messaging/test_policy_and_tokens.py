"""Send windows, backoff and policy validation at their boundaries; signed tokens (what the click
redirect and unsubscribe links trust) round-trip exactly and refuse anything else."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from nurture.datafiles import DataFileError
from services.messaging.domain.policy import (
    DEFAULT_POLICY,
    Policy,
    backoff,
    load_policy,
    next_window,
    zone_of,
)
from services.messaging.domain.tokens import Signer, Token, TokenError

KOLKATA_8AM = datetime(2026, 1, 5, 2, 30, tzinfo=UTC)   # 08:00 in Asia/Kolkata (UTC+5:30)


@pytest.mark.parametrize(("utc", "tz", "expected"), [
    (datetime(2026, 1, 5, 7, 59, 59, tzinfo=UTC), "UTC", datetime(2026, 1, 5, 8, 0, tzinfo=UTC)),
    (datetime(2026, 1, 5, 8, 0, tzinfo=UTC), "UTC", None),                 # the window opens at 08:00 sharp
    (datetime(2026, 1, 5, 19, 59, 59, tzinfo=UTC), "UTC", None),
    (datetime(2026, 1, 5, 20, 0, tzinfo=UTC), "UTC", datetime(2026, 1, 6, 8, 0, tzinfo=UTC)),  # closed at 20:00
    (datetime(2026, 1, 5, 23, 30, tzinfo=UTC), "UTC", datetime(2026, 1, 6, 8, 0, tzinfo=UTC)),
    (datetime(2026, 1, 5, 0, 0, tzinfo=UTC), "UTC", datetime(2026, 1, 5, 8, 0, tzinfo=UTC)),
    (KOLKATA_8AM - timedelta(seconds=1), "Asia/Kolkata", KOLKATA_8AM),
    (KOLKATA_8AM, "Asia/Kolkata", None),
    # 09:00 UTC is 01:00 in Los Angeles (UTC-8 in January): 08:00 there is 16:00 UTC the same day.
    (datetime(2026, 1, 5, 9, 0, tzinfo=UTC), "America/Los_Angeles", datetime(2026, 1, 5, 16, 0, tzinfo=UTC)),
    (datetime(2026, 1, 5, 7, 0, tzinfo=UTC), "Not/AZone", datetime(2026, 1, 5, 8, 0, tzinfo=UTC)),   # UTC
    (datetime(2026, 1, 5, 7, 0, tzinfo=UTC), None, datetime(2026, 1, 5, 8, 0, tzinfo=UTC)),
    (datetime(2026, 1, 5, 7, 0, tzinfo=UTC), "", datetime(2026, 1, 5, 8, 0, tzinfo=UTC)),
])
def test_send_window_boundaries(utc: datetime, tz: str | None, expected: datetime | None) -> None:
    got = next_window(utc, tz)
    assert got == expected
    if got is not None:
        assert got.tzinfo is not None and got.utcoffset() == timedelta(0)


def test_an_unknown_or_empty_zone_is_utc() -> None:
    assert str(zone_of(None)) == str(zone_of("")) == str(zone_of("Not/AZone")) == "UTC"
    assert str(zone_of("Asia/Kolkata")) == "Asia/Kolkata"


@pytest.mark.parametrize(("attempts", "seconds"), [(0, 30), (1, 30), (2, 60), (3, 120), (7, 1920), (8, 3600),
                                                   (30, 3600)])
def test_backoff_doubles_from_30_s_and_stops_at_an_hour(attempts: int, seconds: int) -> None:
    assert backoff(attempts) == timedelta(seconds=seconds)
    assert backoff(attempts, Policy(backoff_base_s=1, backoff_max_s=4)) == timedelta(
        seconds=min(4, 2 ** max(0, attempts - 1)))


@pytest.mark.parametrize(("text", "problem"), [
    ("cap_per_week: 2\n", "cap_per_week must be at least cap_per_day"),
    ("cap_per_day: true\n", "cap_per_day: must be a whole number of at least 1"),
    ("max_attempts: 1.5\n", "max_attempts: must be a whole number of at least 1"),
    ("cap_per_week: 0\n", "cap_per_week: must be a whole number of at least 1"),
    ("min_gap_s: true\n", "min_gap_s: must be a number of seconds, 0 or more"),
    ('backoff_base_s: "30"\n', "backoff_base_s: must be a number of seconds, 0 or more"),
    ('window_start: "08:00"\nwindow_end: "08:00"\n', "window_start must be before window_end"),
])
def test_each_bad_value_is_named(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(DataFileError) as err:
        load_policy(path)
    assert problem in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("text", ["cap_per_week: 3\n", "cap_per_day: 1\nmax_attempts: 1\nmin_gap_s: 0\n",
                                  'window_start: "07:59"\nwindow_end: "08:00"\nbackoff_max_s: 0.5\n', ""])
def test_values_at_their_limits_are_accepted(tmp_path: Path, text: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    policy = load_policy(path)
    assert policy.cap_per_week >= policy.cap_per_day and policy.window_start < policy.window_end
    assert load_policy(path) == policy
    if not text:
        assert policy == DEFAULT_POLICY
    if "07:59" in text:
        assert (policy.window_start, policy.window_end, policy.backoff_max_s) == (time(7, 59), time(8, 0), 0.5)


def test_a_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(match=str(tmp_path / "nope.yaml")):
        load_policy(tmp_path / "nope.yaml")


def signer() -> Signer:
    # Built inside each test (not at import), so the tests that use it are the ones that reach it.
    return Signer("s3cret")


@pytest.mark.parametrize("token", [
    Token("click", "m1", "l1", url="https://www.borderbridge.example/pricing?a=1&b=2", link=3),
    Token("click", "m1", "l1", url="javascript:alert(1)", link=0),
    Token("open", "m" * 33, "lead-with.dots_and-dashes"),
    Token("unsubscribe", "m2", "l2"),
    Token("open", "m", "l"),     # payload lengths that need 0, 1 and 2 padding characters
    Token("open", "mm", "l"),
    Token("open", "mmm", "l"),
])
def test_a_token_round_trips_exactly_and_is_url_safe(token: Token) -> None:
    text = signer().sign(token)
    assert signer().verify(text) == token
    assert signer().verify(text, kind=token.kind) == token
    assert "=" not in text and "/" not in text and "+" not in text and text.count(".") == 1


def test_a_token_of_another_kind_or_secret_or_tampered_is_refused() -> None:
    click = signer().sign(Token("click", "m1", "l1", url="https://a.example/", link=1))
    with pytest.raises(TokenError, match="not a unsubscribe token"):
        signer().verify(click, kind="unsubscribe")
    with pytest.raises(TokenError, match="does not verify"):
        Signer("other").verify(click)
    payload, sig = click.split(".")
    for bad in (payload + "." + sig[:-1], payload[1:] + "." + sig, payload + ".", "." + sig, payload, "",
                payload + "." + sig + ".x", "!!!." + sig):
        with pytest.raises(TokenError):
            signer().verify(bad)


def test_a_signed_payload_that_is_not_a_token_is_refused() -> None:
    import base64
    import hashlib
    import hmac

    key = hashlib.sha256(b"nurture-messaging-token:s3cret").digest()
    for body in (b"[]", b'{"k": "x", "m": "m", "l": "l"}', b'{"k": "c", "m": "m"}', b"not json",
                 b'{"k": "c", "m": "m", "l": "l", "i": "first"}'):
        sig = hmac.new(key, body, hashlib.sha256).digest()
        text = (base64.urlsafe_b64encode(body).rstrip(b"=") + b"." + base64.urlsafe_b64encode(sig).rstrip(b"=")
                ).decode()
        with pytest.raises(TokenError, match="malformed token payload"):
            signer().verify(text)
    # The documented format: the key derivation and compact JSON fields are what links already sent carry.
    body = b'{"k":"c","m":"m9","l":"l9","u":"https://x.example/","i":2}'
    sig = hmac.new(key, body, hashlib.sha256).digest()
    text = (base64.urlsafe_b64encode(body).rstrip(b"=") + b"." + base64.urlsafe_b64encode(sig).rstrip(b"=")).decode()
    assert signer().verify(text) == Token("click", "m9", "l9", url="https://x.example/", link=2)
    assert signer().sign(Token("click", "m9", "l9", url="https://x.example/", link=2)) == text
    assert signer().verify(signer().sign(Token("open", "m", "l"))).url == ""


def test_an_unknown_setting_does_not_hide_the_problems_after_it(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text('burst: 3\ncap_per_day: 0\nwindow_end: "soon"\n')
    with pytest.raises(DataFileError) as err:
        load_policy(path)
    text = str(err.value)
    assert text == (f"{path}: burst: not a policy setting (known: window_start, window_end, cap_per_day, "
                    "cap_per_week, min_gap_s, max_attempts, backoff_base_s, backoff_max_s); "
                    "cap_per_day: must be a whole number of at least 1; "
                    "window_end: 'soon' is not a time of day (HH:MM)")
