"""Address settings naming several replicas of a service (nurture.addresses): the gRPC target each
form becomes, and the clear refusal of a malformed one at start-up, before any call."""

from __future__ import annotations

import pytest

from nurture.addresses import AddressError, grpc_target
from nurture.rpc import sync_channel
from nurture.service import port_for
from nurture.settings import SettingsError, load_settings


@pytest.mark.parametrize(("address", "target"), [
    ("127.0.0.1:50051", "127.0.0.1:50051"),
    ("scoring:50051", "scoring:50051"),  # one DNS name: every address it resolves to
    ("127.0.0.1:50051, 127.0.0.1:50151", "ipv4:127.0.0.1:50051,127.0.0.1:50151"),
    ("10.0.0.5:1,10.0.0.6:1", "ipv4:10.0.0.5:1,10.0.0.6:1"),
    ("[::1]:50051,[::1]:50151", "ipv6:[::1]:50051,[::1]:50151"),
    ("dns:///scoring:50051", "dns:///scoring:50051"),
    ("ipv4:127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
])
def test_each_form_becomes_its_grpc_target(address: str, target: str) -> None:
    assert grpc_target(address) == target


@pytest.mark.parametrize(("address", "says"), [
    ("scoring-a:50051,scoring-b:50051", "not host names (scoring-a, scoring-b)"),
    ("127.0.0.1:50051,", "empty entry"),
    ("127.0.0.1:50051,[::1]:50052", "mixes IPv4 and IPv6"),
    ("127.0.0.1:50051,127.0.0.1:50051", "names one replica twice"),
    ("127.0.0.1", "is not host:port"),
    ("127.0.0.1:0", "is not host:port"),
    ("127.0.0.1:65536", "is not host:port"),
    ("::1:50051,::1:50052", "in brackets"),  # without them, is :50051 a port or part of the address?
    ("[::1:50051", "in brackets"),
    ("dns:", "names no host"),
])
def test_a_malformed_address_is_refused_with_its_reason(address: str, says: str) -> None:
    with pytest.raises(AddressError, match=says.replace("(", r"\(").replace(")", r"\)")):
        grpc_target(address)
    with pytest.raises(SettingsError, match="NURTURE_MESSAGING_ADDR"):
        load_settings(environ={"NURTURE_MESSAGING_ADDR": address})
    with pytest.raises(AddressError):
        sync_channel(address, "token")


def test_a_replica_behind_a_list_needs_its_own_port() -> None:
    listed = load_settings(environ={"NURTURE_SCORING_ADDR": "127.0.0.1:50051,127.0.0.1:50151"})
    with pytest.raises(SettingsError, match="NURTURE_GRPC_PORT"):
        port_for("scoring", listed)
    assert port_for("scoring", listed.with_overrides(grpc_port=50151)) == 50151
    assert port_for("scoring", load_settings(environ={"NURTURE_SCORING_ADDR": "scoring:50061"})) == 50061
