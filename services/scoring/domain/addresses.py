"""Email addresses at lead creation: syntax and normalisation with email-validator (no DNS lookup: a
lead form must not wait on, or fail with, the network), and the role and disposable flags from
`data/addresses.yaml`.

Normalisation is email-validator's: the domain in lower case (and IDNA-decoded to Unicode), the local
part as given, since only the receiving server may say whether `Ana` and `ana` are one mailbox.
"""

from __future__ import annotations

import functools
from pathlib import Path

from email_validator import EmailNotValidError, validate_email

from nurture.datafiles import Strict, load

ADDRESSES_FILE = Path(__file__).parents[1] / "data" / "addresses.yaml"
FLAGS_ATTRIBUTE = "email_flags"  # the lead attribute the flags are kept in (set by scoring, not callers)


class AddressLists(Strict):
    role: list[str] = []
    disposable: list[str] = []


@functools.cache
def address_lists(path: Path = ADDRESSES_FILE) -> AddressLists:
    """addresses.yaml, read once (a bad file fails the first lead write and the service's start)."""
    return load(AddressLists, path)


def check_email(raw: str) -> tuple[str, str]:
    """(the normalised address, "") or ("", why it is not an email address)."""
    try:
        return validate_email(raw, check_deliverability=False).normalized, ""
    except EmailNotValidError as exc:
        return "", str(exc)


def _lowered(lists: AddressLists) -> tuple[frozenset[str], frozenset[str]]:
    return frozenset(r.lower() for r in lists.role), frozenset(d.lower() for d in lists.disposable)


@functools.cache
def _default_lowered() -> tuple[frozenset[str], frozenset[str]]:
    """The file's lists as sets, made once (not on every lead write)."""
    return _lowered(address_lists())


def email_flags(address: str, lists: AddressLists | None = None) -> list[str]:
    """"role" and/or "disposable" for an address, in that order; [] for neither."""
    role, disposable = _default_lowered() if lists is None else _lowered(lists)
    local, _, domain = address.rpartition("@")
    flags = []
    if local.lower() in role:
        flags.append("role")
    if domain.lower() in disposable:
        flags.append("disposable")
    return flags
