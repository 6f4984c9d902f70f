"""The mesh credential: signed per call with the mesh key, bound to the method and a time window."""

from __future__ import annotations

import pytest

from nurture.meshauth import HEADER, WINDOW_S, Signer, Verifier

METHOD = "/nurture.api.scoring.v1.Scoring/GetLead"
NOW = 1_800_000_000.0


def md(value: str) -> list[tuple[str, str]]:
    return [("traceparent", "x"), (HEADER, value)]


def test_a_signed_call_verifies_and_names_no_key_when_it_does_not() -> None:
    header = Signer("k1").header(METHOD, now=NOW)
    assert "k1" not in header
    assert Verifier(["k1"]).problem(METHOD, md(header), now=NOW + 3) is None
    assert Verifier(["k1"]).problem(METHOD, [(HEADER, header.encode())], now=NOW) == "malformed mesh credential"
    problem = Verifier(["k2"]).problem(METHOD, md(header), now=NOW)
    assert problem is not None and "does not verify" in problem and "k2" not in problem


def test_the_credential_is_bound_to_its_method_and_time() -> None:
    header = Signer("k1").header(METHOD, now=NOW)
    verifier = Verifier(["k1"])
    assert verifier.problem("/nurture.api.scoring.v1.Scoring/EraseLead", md(header), now=NOW) is not None
    assert "window" in (verifier.problem(METHOD, md(header), now=NOW + WINDOW_S + 1) or "")
    assert "window" in (verifier.problem(METHOD, md(header), now=NOW - WINDOW_S - 1) or "")


@pytest.mark.parametrize("value", ["", "v1", "v1..", "v1.x.abc", "v2.1800000000.abc", "v1.1800000000.é€",
                                   "v1.-5.abc"])
def test_malformed_credentials_are_refused(value: str) -> None:
    assert Verifier(["k1"]).problem(METHOD, md(value), now=NOW) is not None


def test_missing_credentials_and_keyless_servers_refuse() -> None:
    assert "no mesh credential" in (Verifier(["k1"]).problem(METHOD, [], now=NOW) or "")
    assert "no mesh credential" in (Verifier(["k1"]).problem(METHOD, None, now=NOW) or "")
    header = Signer("k1").header(METHOD, now=NOW)
    assert Verifier(["", ""]).problem(METHOD, md(header), now=NOW) is not None
    assert not Signer("")


def test_rotation_accepts_the_previous_key_until_it_is_dropped() -> None:
    old = Signer("old").header(METHOD, now=NOW)
    new = Signer("new").header(METHOD, now=NOW)
    during = Verifier(["new", "old"])
    assert during.problem(METHOD, md(old), now=NOW) is None
    assert during.problem(METHOD, md(new), now=NOW) is None
    assert Verifier(["new"]).problem(METHOD, md(old), now=NOW) is not None


def test_a_remembered_credential_still_expires_and_stays_bound_to_its_method() -> None:
    signer, verifier = Signer("k1"), Verifier(["k1"])
    header = signer.header(METHOD, now=NOW)
    assert signer.header(METHOD, now=NOW + 0.5) == header  # made once per second
    assert signer.header(METHOD, now=NOW + 1) != header
    assert verifier.problem(METHOD, md(header), now=NOW) is None
    assert verifier.problem(METHOD, md(header), now=NOW + 1) is None  # remembered
    assert verifier.problem("/nurture.api.scoring.v1.Scoring/EraseLead", md(header), now=NOW) is not None
    assert verifier.problem(METHOD, md(header), now=NOW + WINDOW_S + 1) is not None


def test_a_traceparent_carried_after_the_credential_leaves_the_signature_as_strong() -> None:
    """A call's traceparent rides after its credential (`;`): the credential part verifies as it does
    alone, whatever traceparent follows (the verified one is remembered without it), and a credential
    that does not verify alone does not verify with one."""
    header = Signer("k1").header(METHOD, now=NOW)
    verifier = Verifier(["k1"])
    for traceparent in ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "anything"):
        assert verifier.problem_of(METHOD, f"{header};{traceparent}", now=NOW) is None
    stamp, mac = header.rsplit(".", 1)
    forged = f"{stamp}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}"
    assert "does not verify" in (verifier.problem_of(METHOD, f"{forged};00-x", now=NOW) or "")
    assert verifier.problem_of("/nurture.api.scoring.v1.Scoring/EraseLead", f"{header};00-x", now=NOW) is not None
    assert "window" in (verifier.problem_of(METHOD, f"{header};00-x", now=NOW + WINDOW_S + 1) or "")
    assert verifier.problem_of(METHOD, f";{header}", now=NOW) == "malformed mesh credential"
