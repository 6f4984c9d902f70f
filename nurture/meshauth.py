"""The credential every gRPC call between our processes carries (wired in by nurture.rpc).

A caller holding the mesh key (`NURTURE_MESH_TOKEN`) signs each call: metadata `x-nurture-mesh` is
`v1.<unix seconds>.<base64url HMAC-SHA256(key, "v1|<seconds>|<full method>")>`. The key itself never
travels, so a captured call yields a credential for that one method for `WINDOW_S` either side of its
time, not the key. The server accepts a signature by any of its keys (current, and the previous one during
a rotation), compared in constant time. Wall-clock time on purpose: this is transport, not domain time
(the virtual clock does not apply); hosts of one mesh need clocks within `WINDOW_S` of each other.

A call's W3C `traceparent` rides in the same entry, after the credential and a `;`
(`v1.<seconds>.<mac>;00-<trace id>-<span id>-<flags>`): one metadata entry a call instead of two, each of
which costs every hop gRPC's encoding and decoding. The signature covers what it covers without it
(version, time and method; the traceparent is not signed, as a separate `traceparent` entry is not), and
the verifier reads only the part before the `;` (`Verifier.problem_of`). It was rolled out in two releases,
because a server that does not know the form reads the combined value as a bad credential: first every
server learnt to read both forms (895dc25), then callers (nurture.rpc's channel) switched to the one
entry. Servers keep reading the two-entry form (a credential alone, a separate `traceparent` entry),
which older callers send during a rolling upgrade (docs/CAPACITY.md, "One metadata entry a call").

`python -m nurture.meshauth /nurture.api.scoring.v1.Scoring/GetLead` prints a header value for that
method made with NURTURE_MESH_TOKEN, for grpcurl (`-H "x-nurture-mesh: ..."`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sys
import time
from collections.abc import Iterable, Sequence

HEADER = "x-nurture-mesh"
WINDOW_S = 300
_VERSION = "v1"


def _key(token: str) -> hmac.HMAC:
    """A keyed HMAC to copy per call (cheaper than keying one each time). The key is derived, so the
    mesh token is never used raw and a token reused elsewhere cannot sign mesh calls."""
    return hmac.new(hashlib.sha256(b"nurture-mesh-call:" + token.encode()).digest(), digestmod=hashlib.sha256)


def _mac(key: hmac.HMAC, seconds: int, method: str) -> bytes:
    mac = key.copy()
    mac.update(f"{_VERSION}|{seconds}|{method}".encode())
    return mac.digest()


_CACHE_MAX = 4096
_OUTSIDE = f"mesh credential outside the {WINDOW_S} s window (replayed, or clocks apart)"
# What separates the credential from the traceparent a call carries with it (neither contains one).
TRACE_SEPARATOR = ";"


class Signer:
    """Makes the credential of one call (the client side). A credential is the same for every call of
    one method within one second, so it is made once per (method, second): a busy channel signs a
    handful of times a second, not once per call."""

    def __init__(self, token: str) -> None:
        self._key = _key(token) if token else None
        # Whether this signer has a key (`bool(signer)`), as an attribute: the channel asks on every call,
        # and `__bool__` is a Python call each time.
        self.signs = self._key is not None
        self._made: dict[str, tuple[int, str]] = {}

    def __bool__(self) -> bool:
        return self.signs

    def header(self, method: str | bytes, now: float | None = None) -> str:
        if self._key is None:
            raise ValueError("no mesh token (NURTURE_MESH_TOKEN) to sign with")
        name = method.decode() if isinstance(method, bytes) else method
        seconds = int(time.time() if now is None else now)
        made = self._made.get(name)
        if made is not None and made[0] == seconds:
            return made[1]
        mac = base64.urlsafe_b64encode(_mac(self._key, seconds, name)).rstrip(b"=").decode()
        value = f"{_VERSION}.{seconds}.{mac}"
        if len(self._made) >= _CACHE_MAX:
            self._made.clear()
        self._made[name] = (seconds, value)
        return value


class Verifier:
    """Checks the credential of one call (the server side) against every key it accepts. A credential
    that verified is remembered with its method and time, so the next calls carrying it (the same client
    within the same second) cost a lookup, not a parse and an HMAC; the time window is still checked
    on every call. (It stays exactly as replayable as it was: within the window, for that method.)"""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._keys = [_key(t) for t in tokens if t]
        # (method, credential) → its time, for the window check of the calls that repeat it.
        self._verified: dict[tuple[str, str], int] = {}

    def problem(self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None,
                now: float | None = None) -> str | None:
        """None when the call carries a valid credential, else why not (for the status and the log;
        it names no key)."""
        return self.problem_of(method, next((v for k, v in (metadata or ()) if k == HEADER), None), now)

    def problem_of(self, method: str, value: object, now: float | None = None) -> str | None:
        """As `problem`, given the call's credential (its metadata value; None without one)."""
        if value is None:
            return f"no mesh credential (metadata {HEADER})"
        if not self._keys:
            return "this server has no mesh token configured (NURTURE_MESH_TOKEN)"
        if not isinstance(value, str):
            return "malformed mesh credential"
        # Only the part before a traceparent riding in the same entry is the credential (module docstring).
        if TRACE_SEPARATOR in value:
            value = value.partition(TRACE_SEPARATOR)[0]
        seconds = self._verified.get((method, value))
        if seconds is not None:  # verified before: only its window is checked again (one lookup)
            return _OUTSIDE if abs((time.time() if now is None else now) - seconds) > WINDOW_S else None
        version, _, rest = value.partition(".")
        stamp, _, mac = rest.partition(".")
        if version != _VERSION or not stamp.isdigit() or not mac:
            return "malformed mesh credential"
        seconds = int(stamp)
        if abs((time.time() if now is None else now) - seconds) > WINDOW_S:
            return _OUTSIDE
        try:
            given = base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))
        except (ValueError, TypeError):
            return "malformed mesh credential"
        # Every key is compared, whatever the first gives, so timing tells nothing about which matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, _mac(key, seconds, method))
        if not matched:
            return "mesh credential does not verify (wrong NURTURE_MESH_TOKEN?)"
        if len(self._verified) >= _CACHE_MAX:
            self._verified.clear()
        self._verified[(method, value)] = seconds
        return None


def main(argv: list[str]) -> int:
    token = os.environ.get("NURTURE_MESH_TOKEN", "")
    if len(argv) != 1 or not token:
        print("usage: NURTURE_MESH_TOKEN=... python -m nurture.meshauth /<package.Service>/<Method>",
              file=sys.stderr)
        return 2
    print(Signer(token).header(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
