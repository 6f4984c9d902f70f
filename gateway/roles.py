"""Who may do what: API keys carry a role, and every request needs the role its method and path ask for.

Roles, each including the one before it (nurture.settings.ROLES):
- viewer: reads (GET/HEAD on /v1 and every console page);
- editor: also writes (leads, events, drafts, simulations, publishing journeys and the scoring model);
- admin: also operates the mesh (/v1/admin/*, the console's retries of dead letters).

`NURTURE_API_KEY`, the one key there was before roles, is admin: every client holding it could already do
everything, so any lesser role would break them on upgrade with a 403. Lesser keys come from
`NURTURE_API_KEYS` (key → role). The same table decides for the API and the console (docs/SECURITY.md).
"""

from __future__ import annotations

import hashlib
import hmac

from nurture.settings import ROLES, Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def rank(role: str) -> int:
    """A role's place in ROLES (-1 when unknown: allowed nothing)."""
    return ROLES.index(role) if role in ROLES else -1


def allows(role: str, needed: str) -> bool:
    return rank(role) >= rank(needed) >= 0


def required_role(method: str, path: str) -> str:
    """The least role a request needs."""
    if path.startswith("/v1/admin/"):
        return "admin"
    return "viewer" if method.upper() in SAFE_METHODS else "editor"


def _same(given: str, expected: str) -> bool:
    # Headers arrive as latin-1 text and compare_digest refuses non-ASCII str: compare octets.
    return hmac.compare_digest(given.encode("latin-1", "replace"), expected.encode("utf-8"))


def role_of(settings: Settings, given: str) -> str | None:
    """The role of an API key, None when it is no key of ours. Every configured key is compared (in
    constant time each), so the answer's timing does not tell which one matched or how far."""
    found: str | None = None
    if settings.api_key and _same(given, settings.api_key):
        found = "admin"
    for key, role in settings.api_keys.items():
        if key and _same(given, key) and found is None:
            found = role
    return found


def fingerprint(key: str) -> str:
    """What a session remembers of the key it was opened with: enough to find the key again (and so to
    end the session when the key is removed), useless for calling the API."""
    return hashlib.sha256(b"nurture-console-key|" + key.encode("utf-8")).hexdigest()[:32]


def role_by_fingerprint(settings: Settings, print_: str) -> str | None:
    """The current role of the key a session was opened with, None when that key is gone."""
    found: str | None = None
    if settings.api_key and hmac.compare_digest(fingerprint(settings.api_key), print_):
        found = "admin"
    for key, role in settings.api_keys.items():
        if key and hmac.compare_digest(fingerprint(key), print_) and found is None:
            found = role
    return found
