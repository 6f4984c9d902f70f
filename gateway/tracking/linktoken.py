"""The signed token a tracked email click hands to the website (`nurture_id=<token>` on the redirect):
the lead whose message was clicked, until when. The snippet sends it back to `/t/v1/identify`, which
verifies it here, so the visitor becomes that lead without typing anything and nobody can forge one.
HMAC-SHA256 under the link secret (`NURTURE_SECRET`; the previous one still verifies during a rotation)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta

LIFETIME = timedelta(days=7)
PARAM = "nurture_id"
_PURPOSE = b"nurture-website-identify:"


class LinkTokenError(ValueError):
    pass


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, body: str) -> str:
    return _b64(hmac.new(secret.encode(), _PURPOSE + body.encode(), hashlib.sha256).digest())


def sign(secret: str, lead_id: str, now: datetime) -> str:
    if not secret:
        raise LinkTokenError("no link secret is configured")
    body = _b64(json.dumps({"l": lead_id, "e": int((now + LIFETIME).timestamp())}, separators=(",", ":")).encode())
    return f"{body}.{_mac(secret, body)}"


def verify(secrets: tuple[str, ...], token: str, now: datetime) -> str:
    """The lead id the token names; LinkTokenError when it is forged, damaged or expired."""
    body, _, mac = token.partition(".")
    if not body or not mac or len(token) > 1024 or not token.isascii():
        raise LinkTokenError("not a link token")
    if not any(s and hmac.compare_digest(_mac(s, body), mac) for s in secrets):
        raise LinkTokenError("the link token does not verify")
    try:
        claims = json.loads(_unb64(body))
        lead_id, expires = str(claims["l"]), int(claims["e"])
    except (ValueError, KeyError, TypeError) as exc:
        raise LinkTokenError("not a link token") from exc
    if expires < now.timestamp():
        raise LinkTokenError("the link token has expired")
    return lead_id
