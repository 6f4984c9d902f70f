"""DKIM (RFC 6376) signing of outgoing mail, with dkimpy, per sending domain and selector.

Keys are PEM files named by configuration (`NURTURE_DKIM_KEYS`: `{"<domain>:<selector>": "<pem path>"}`),
never values in the source. A domain with one key signs with it; a domain with several (a rotation in
progress) signs with the selector `NURTURE_DKIM_SELECTORS` names for it (`{"<domain>": "<selector>"}`),
while every configured key's record stays listed for publication, so mail signed with the old selector
just before the switch still verifies. A message is signed with the key of its From domain when there
is one, else with the primary domain's (`NURTURE_DKIM_DOMAIN`, else the only domain configured).

The signature covers the headers a receiver shows or acts on, including List-Unsubscribe and
List-Unsubscribe-Post (RFC 8058 requires both be signed for one-click unsubscribe to be honoured).
dkimpy canonicalizes, hashes and builds the header; the RSA operation itself is OpenSSL's (see
`_openssl_rsa_sign`). Messaging signs on its SMTP worker threads, never on the event loop.
"""

from __future__ import annotations

import base64
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils


def _openssl_rsa_sign(digest: Any, private_key: Mapping[str, int]) -> bytes:
    """The RSASSA-PKCS1-v1_5 signature dkimpy asks for, made by OpenSSL (cryptography) instead of
    dkimpy's own Python `pow`: 0.7 ms of CPU a message instead of 10 (measured with 2048-bit keys), which
    at a mailing's volume is the difference between signing being free and being the bottleneck. PKCS#1
    v1.5 signatures are deterministic, so the bytes are the same as dkimpy's (a unit test holds that)."""
    key = _rsa_key(*(int(private_key[name]) for name in _RSA_FIELDS))
    value = digest.digest()
    algorithm: hashes.HashAlgorithm = hashes.SHA256() if len(value) == 32 else hashes.SHA1()
    return key.sign(value, padding.PKCS1v15(), utils.Prehashed(algorithm))


_RSA_FIELDS = ("modulus", "publicExponent", "privateExponent", "prime1", "prime2", "exponent1", "exponent2",
               "coefficient")


@functools.lru_cache(maxsize=32)
def _rsa_key(n: int, e: int, d: int, p: int, q: int, dmp1: int, dmq1: int, iqmp: int) -> rsa.RSAPrivateKey:
    return rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, rsa.RSAPublicNumbers(e, n)).private_key()


# dkimpy (pinned) computes the signature through this module-level name in gen_header; verification
# and everything else stay dkimpy's own.
DKIMPY_RSA_SIGN = dkim.RSASSA_PKCS1_v1_5_sign
dkim.RSASSA_PKCS1_v1_5_sign = _openssl_rsa_sign

SIGNED_HEADERS = (b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
                  b"reply-to", b"list-unsubscribe", b"list-unsubscribe-post")
KEY_BITS = 2048


class DkimError(ValueError):
    """The DKIM configuration cannot be used (a missing or unreadable key, an ambiguous selector)."""


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    private_pem: bytes

    @property
    def record_name(self) -> str:
        """Where the public key is published: `<selector>._domainkey.<domain>`."""
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def dns_txt(self) -> str:
        """The TXT record's value to publish (`v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>`)."""
        private = serialization.load_pem_private_key(self.private_pem, password=None)
        public = private.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


@dataclass(frozen=True)
class DkimSigner:
    """The configured keys and, per domain, the one that signs."""

    keys: tuple[DkimKey, ...]
    signing: Mapping[str, DkimKey]
    primary: str

    @property
    def enabled(self) -> bool:
        return bool(self.signing)

    def key_for(self, from_domain: str) -> DkimKey | None:
        return self.signing.get(from_domain.lower()) or self.signing.get(self.primary)

    def sign(self, message: bytes, from_domain: str) -> bytes:
        """The message with a DKIM-Signature header in front (unchanged when no key is configured)."""
        key = self.key_for(from_domain)
        if key is None:
            return message
        header = dkim.sign(message, key.selector.encode(), key.domain.encode(), key.private_pem,
                           canonicalize=(b"relaxed", b"relaxed"), include_headers=list(SIGNED_HEADERS))
        return bytes(header) + message


NO_SIGNER = DkimSigner((), {}, "")


def load_signer(keys: Mapping[str, str], selectors: Mapping[str, str], primary: str = "") -> DkimSigner:
    """The signer from configuration (see the module docstring); DkimError listing every problem."""
    problems: list[str] = []
    loaded: list[DkimKey] = []
    for name, path in keys.items():
        domain, sep, selector = name.partition(":")
        domain, selector = domain.strip().lower(), selector.strip()
        if not sep or not domain or not selector:
            problems.append(f"NURTURE_DKIM_KEYS: {name!r} must be '<domain>:<selector>'")
            continue
        try:
            pem = Path(path).read_bytes()
            serialization.load_pem_private_key(pem, password=None)
        except (OSError, ValueError, TypeError) as exc:
            problems.append(f"NURTURE_DKIM_KEYS: {name}: cannot read an unencrypted PEM private key from {path}: {exc}")
            continue
        loaded.append(DkimKey(domain, selector, pem))
    signing: dict[str, DkimKey] = {}
    for domain in sorted({k.domain for k in loaded}):
        mine = [k for k in loaded if k.domain == domain]
        chosen = selectors.get(domain)
        if chosen is None and len(mine) > 1:
            problems.append(f"NURTURE_DKIM_SELECTORS: {domain} has keys {', '.join(k.selector for k in mine)}; "
                            "name the one that signs")
            continue
        pick = [k for k in mine if chosen is None or k.selector == chosen]
        if not pick:
            problems.append(f"NURTURE_DKIM_SELECTORS: {domain}: no key with selector {chosen!r}")
            continue
        signing[domain] = pick[0]
    primary = primary.lower() or (next(iter(signing)) if len(signing) == 1 else "")
    if signing and primary not in signing:
        problems.append(f"NURTURE_DKIM_DOMAIN: {primary or '(unset)'} must be one of the key domains: "
                        f"{', '.join(sorted(signing))}")
    if problems:
        raise DkimError("; ".join(problems))
    return DkimSigner(tuple(loaded), signing, primary)


def generate_key(path: Path) -> None:
    """A new RSA key as PEM at `path`, created 0600 (never readable by others, not even for an instant)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
