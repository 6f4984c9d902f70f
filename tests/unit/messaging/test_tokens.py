"""Link tokens decode strictly: one token has one spelling, so a link cannot be varied (to dodge a
dedupe, a cache or a block list) and still verify."""

from __future__ import annotations

import pytest

from services.messaging.domain.tokens import Signer, Token, TokenError

SIGNER = Signer("test-secret")
TOKEN = SIGNER.sign(Token(kind="click", message_id="m-1", lead_id="l-1", url="https://example.com/x", link=2))
HEAD, SIG = TOKEN.split(".")


def test_a_token_verifies_as_signed() -> None:
    assert SIGNER.verify(TOKEN, kind="click") == Token("click", "m-1", "l-1", "https://example.com/x", 2)


@pytest.mark.parametrize("variant", [
    TOKEN + "~", TOKEN + "!", f"{HEAD}!.{SIG}", f"{HEAD}.{SIG}=", f"{HEAD}==.{SIG}", f" {TOKEN}", f"{TOKEN}\n",
    f"{HEAD}.{SIG[:-1]}{chr(ord(SIG[-1]) + 1)}",   # the same bytes with other trailing bits
    f"{HEAD}.{SIG}.x", f"{HEAD}.\u00e9{SIG}", f"{HEAD}+.{SIG}", f"{HEAD}/.{SIG}", f"{HEAD[:-1]}.{SIG}",
    "", ".", "a" * 10_000,
])
def test_a_varied_spelling_is_refused(variant: str) -> None:
    with pytest.raises(TokenError):
        SIGNER.verify(variant)
