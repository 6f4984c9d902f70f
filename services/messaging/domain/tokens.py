"""Signed tokens for tracking and unsubscribe links.

A token is `<payload>.<signature>`, both base64url without padding: the payload is compact JSON naming
the kind (`o` open, `c` click, `u` unsubscribe), the message, the lead and (for clicks) the destination,
and the signature is HMAC-SHA256 over the payload with a key derived from `settings.secret`. A click
redirects only to the URL inside a token whose signature verifies, so the tracker is never an open redirect.

This is the one place links are signed and verified. Rotation: new tokens are signed with the current
secret; a token signed with `settings.secret_previous` keeps verifying while that setting is set. Tokens
carry no expiry (an unsubscribe link in an old email must keep working), so the previous secret is what
expires: drop it once links signed with it may stop working (see docs/SECURITY.md). No secret, no tokens:
a Signer refuses to exist without one rather than sign with a key anyone can compute.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass

KINDS = {"o": "open", "c": "click", "u": "unsubscribe"}
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
MAX_TOKEN_CHARS = 4096


class TokenError(ValueError):
    """A token that is malformed or whose signature does not verify."""


@dataclass(frozen=True)
class Token:
    kind: str            # open | click | unsubscribe
    message_id: str
    lead_id: str
    url: str = ""        # click destination
    link: int = 0        # link index within the message (click)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict base64url without padding: Python's decoder drops characters outside the alphabet and
    ignores stray bits, so `abc.sig`, `a!bc.sig` and `abc.sig~` would all verify as one token. Only
    the one canonical spelling of the bytes is taken."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if _b64(data) != text:
        raise ValueError("not the canonical base64url of its bytes")
    return data


def _derive(secret: str) -> bytes:
    return hashlib.sha256(b"nurture-messaging-token:" + secret.encode()).digest()


class Signer:
    """Signs tokens with the current secret; verifies them with it or with the previous one (rotation)."""

    def __init__(self, secret: str, previous: str = "") -> None:
        if not secret:
            raise ValueError("NURTURE_SECRET is not set: tracking and unsubscribe links cannot be signed")
        self._key = _derive(secret)
        self._keys = [self._key] + ([_derive(previous)] if previous and previous != secret else [])

    def _sig(self, payload: bytes, key: bytes | None = None) -> bytes:
        return hmac.new(key or self._key, payload, hashlib.sha256).digest()

    def _verifies(self, payload: bytes, signature: bytes) -> bool:
        # Every key is tried, whatever the first says: timing does not tell which secret signed a token.
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(signature, self._sig(payload, key))
        return ok

    def sign(self, token: Token) -> str:
        """The URL-safe string for a token."""
        short = next(k for k, v in KINDS.items() if v == token.kind)
        body: dict[str, object] = {"k": short, "m": token.message_id, "l": token.lead_id}
        if token.url:
            body["u"] = token.url
            body["i"] = token.link
        payload = json.dumps(body, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._sig(payload))}"

    def verify(self, text: str, *, kind: str | None = None) -> Token:
        """The token inside `text`, or TokenError when it was tampered with or is of another kind."""
        try:
            if len(text) > MAX_TOKEN_CHARS or text.count(".") != 1:
                raise ValueError("not <payload>.<signature>")
            head, _, sig = text.partition(".")
            payload = _unb64(head)
            signature = _unb64(sig)
        except (ValueError, TypeError, binascii.Error) as exc:
            raise TokenError("malformed token") from exc
        if not sig or not self._verifies(payload, signature):
            raise TokenError("token signature does not verify")
        try:
            body = json.loads(payload)
            token = Token(kind=KINDS[body["k"]], message_id=str(body["m"]), lead_id=str(body["l"]),
                          url=str(body.get("u", "")), link=int(body.get("i", 0)))
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenError("malformed token payload") from exc
        if kind is not None and token.kind != kind:
            raise TokenError(f"not a {kind} token")
        return token
