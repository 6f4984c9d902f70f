"""The tracking endpoints' rules, without a network: site keys as configured, origins, the allowed
events, bots and prefetchers, privacy signals, signed link tokens and where a click carries one."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.tracking import linktoken
from gateway.tracking.clicks import identified_destination
from gateway.tracking.keys import normal_origin, parse_site_keys
from gateway.tracking.policy import bot_fragments, check_event, collect_policy, not_a_visitor, privacy_refusal
from nurture.settings import SettingsError

KEY = "pk_test_0123456789abcdef"
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"


def keys(**config: object) -> dict:
    return parse_site_keys(json.dumps({KEY: {"origins": ["https://www.site.example"], **config}}))


def test_site_keys_are_read_with_defaults_and_match_origins_exactly() -> None:
    key = keys()[KEY]
    assert key.honor_dnt and key.honor_gpc and key.rate_per_s > 0 and key.visitor_per_min > 0
    assert key.allows("https://www.site.example") and key.allows("HTTPS://WWW.SITE.EXAMPLE:443")
    for other in ("http://www.site.example", "https://site.example", "https://www.site.example.evil.example",
                  "https://www.site.example:8443", "null", "", None):
        assert not key.allows(other), other
    assert parse_site_keys("") == {}


@pytest.mark.parametrize("raw", [
    "not json", "[]", json.dumps({"short": {"origins": ["https://a.example"]}}),
    json.dumps({KEY: {"origins": []}}), json.dumps({KEY: {"origins": ["https://a.example/path"]}}),
    json.dumps({KEY: {"origins": ["ftp://a.example"]}}), json.dumps({KEY: {"origins": ["https://a.example"], "x": 1}}),
    json.dumps({KEY: {"origins": ["https://a.example"], "rate_per_s": 0}}),
])
def test_bad_site_key_settings_fail_naming_the_problem_not_the_key(raw: str) -> None:
    with pytest.raises(SettingsError) as err:
        parse_site_keys(raw)
    assert KEY not in str(err.value)


def test_origins_are_normalised() -> None:
    assert normal_origin("https://Example.COM:443/") == "https://example.com"
    assert normal_origin("http://localhost:8080") == "http://localhost:8080"
    assert normal_origin("https://user@example.com") is None
    assert normal_origin("https://example.com/x") is None
    assert normal_origin("javascript:alert(1)") is None


def test_only_allowed_events_and_properties_pass() -> None:
    event, problem = check_event({"id": "a-1", "type": "page_viewed",
                                  "properties": {"page": "/pricing", "category": "pricing", "title": "x" * 2000}})
    assert problem == "" and event is not None and len(event.properties["title"]) == collect_policy().max_string
    assert event.occurred_at is None  # the service's time on arrival, never the browser's
    for raw in ({"id": "a", "type": "checkout_started"}, {"id": "a", "type": "trial_started"},
                {"id": "a", "type": "unsubscribed"}, {"id": "a", "type": "page_viewed", "properties": {"deal": 1}},
                {"id": "a b", "type": "page_viewed"}, {"type": "page_viewed"},
                {"id": "a", "type": "page_viewed", "at": "x"},
                {"id": "a", "type": "page_viewed", "properties": {"page": ["x"]}}, "page_viewed"):
        assert check_event(raw)[0] is None, raw
    assert "page_viewed" in collect_policy().events and "email_clicked" not in collect_policy().events


@pytest.mark.parametrize("headers", [
    {"user-agent": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"},
    {"user-agent": "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/131.0 Safari/537.36"},
    {"user-agent": "facebookexternalhit/1.1"}, {"user-agent": "curl/8.5.0"}, {"user-agent": ""}, {},
    {"user-agent": CHROME, "sec-purpose": "prefetch"}, {"user-agent": CHROME, "purpose": "prefetch"},
    {"user-agent": CHROME, "sec-purpose": "prefetch;prerender"},
])
def test_bots_and_prefetchers_are_not_visitors(headers: dict[str, str]) -> None:
    assert not_a_visitor(headers) in ("bot", "prefetch")


def test_a_browser_is_a_visitor_and_the_bot_list_is_data() -> None:
    assert not_a_visitor({"user-agent": CHROME}) == ""
    assert "bot" in bot_fragments() and all(f == f.lower() for f in bot_fragments())


def test_privacy_signals_are_honoured_as_the_key_says() -> None:
    honouring, ignoring = keys()[KEY], keys(honor_dnt=False, honor_gpc=False)[KEY]
    assert privacy_refusal(honouring, {"dnt": "1"}) == "do_not_track"
    assert privacy_refusal(honouring, {"sec-gpc": "1"}) == "global_privacy_control"
    assert privacy_refusal(honouring, {"dnt": "0"}) == ""
    assert privacy_refusal(ignoring, {"dnt": "1", "sec-gpc": "1"}) == ""


def test_link_tokens_verify_only_unaltered_unexpired_and_under_our_secrets() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    token = linktoken.sign("s3cret", "lead-1", now)
    assert linktoken.verify(("s3cret",), token, now) == "lead-1"
    assert linktoken.verify(("new", "s3cret"), token, now) == "lead-1"  # the previous secret, during a rotation
    body, _, mac = token.partition(".")
    forged_body = linktoken._b64(json.dumps({"l": "lead-2", "e": 9999999999}).encode())
    for bad in (f"{forged_body}.{mac}", f"{body}.{mac[:-2]}xx", "", ".", "a.b", token + "x", f"{body}.é{mac}",
                f"{body}.{mac[:-1]}\udcff"):
        with pytest.raises(linktoken.LinkTokenError):
            linktoken.verify(("s3cret",), bad, now)
    with pytest.raises(linktoken.LinkTokenError):
        linktoken.verify(("s3cret",), token, now + linktoken.LIFETIME + timedelta(seconds=1))
    with pytest.raises(linktoken.LinkTokenError):
        linktoken.verify(("other",), token, now)
    with pytest.raises(linktoken.LinkTokenError):
        linktoken.sign("", "lead-1", now)


def test_a_click_carries_the_identity_only_to_tracked_sites() -> None:
    site = keys()
    url = identified_destination("https://www.site.example/pricing?utm_source=email", "lead-1", site, "s3cret")
    query = parse_qs(urlsplit(url).query)
    assert query["utm_source"] == ["email"]
    assert linktoken.verify(("s3cret",), query[linktoken.PARAM][0], datetime.now(UTC)) == "lead-1"
    for elsewhere in ("https://partner.example/x", "http://www.site.example/pricing"):
        assert identified_destination(elsewhere, "lead-1", site, "s3cret") == elsewhere
    assert identified_destination("https://www.site.example/", "", site, "s3cret") == "https://www.site.example/"
    # A token already in the destination is replaced, not doubled.
    again = identified_destination(url, "lead-2", site, "s3cret")
    assert len(parse_qs(urlsplit(again).query)[linktoken.PARAM]) == 1
