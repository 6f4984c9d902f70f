"""A service's address setting (`NURTURE_<SVC>_ADDR`) and the gRPC target it becomes.

One address may name several replicas of a service; the client channel (nurture.rpc) then balances its
calls over all of them (round_robin) and leaves out one that stops answering. The forms:

- `host:port`: one name or address. The channel keeps one connection (pick_first): a name that resolves
  to several addresses sends its calls to one of them and moves to another when it fails.
- `dns:///host:port`: a DNS name standing for every replica (a scaled compose service, a headless
  Kubernetes service): the channel balances over all of them; gRPC's resolver asks DNS again when a
  connection fails.
- `127.0.0.1:50051,127.0.0.1:50061` (or `[::1]:50051,[::1]:50061`): a list of IP literals, one per
  replica, all of one family (gRPC's `ipv4:`/`ipv6:` targets hold one family). A host name in a list is
  refused: a name that stands for several replicas belongs in DNS, alone.
- a gRPC target with its scheme (`dns:///scoring:50051`, `ipv4:...`, `ipv6:...`, `unix:...`), as is.

A process that serves one replica of a list cannot tell from the list which entry is its own: it takes
its port from `NURTURE_GRPC_PORT` (nurture.service.port_for), which `nurture up --replicas` sets per
replica.
"""

from __future__ import annotations

import ipaddress

SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:")


class AddressError(ValueError):
    """An address setting that names no usable gRPC target; the message says what is wrong."""


def _host_port(entry: str) -> tuple[str, int]:
    host, sep, port = entry.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"{entry!r} is not host:port (a port 1-65535)")
    if host.startswith("["):
        if not host.endswith("]"):
            raise AddressError(f"{entry!r}: an IPv6 address goes in brackets, [::1]:50051")
        host = host[1:-1]
    elif ":" in host:  # ::1:50051 could be an address without a port
        raise AddressError(f"{entry!r}: an IPv6 address goes in brackets, [::1]:50051")
    return host, int(port)


def _family(host: str) -> int | None:
    """4 or 6 for an IP literal, None for a name."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def endpoints(address: str) -> list[tuple[str, int]]:
    """The (host, port) pairs a plain address or list names (raises AddressError); a target with a
    scheme is not split here (its resolver decides)."""
    entries = [e.strip() for e in address.split(",")]
    if any(not e for e in entries):
        raise AddressError(f"{address!r} has an empty entry (a stray comma?)")
    pairs = [_host_port(e) for e in entries]
    if len(pairs) > 1:
        families = {_family(h) for h, _ in pairs}
        if None in families:
            names = ", ".join(h for h, _ in pairs if _family(h) is None)
            raise AddressError(f"a list of replicas names IP addresses, not host names ({names}); for names, "
                               "give one DNS name that resolves to every replica, as dns:///<name>:<port>")
        if len(families) > 1:
            raise AddressError(f"{address!r} mixes IPv4 and IPv6 addresses; list one family")
        if len(set(pairs)) < len(pairs):
            raise AddressError(f"{address!r} names one replica twice")
    return pairs


def grpc_target(address: str) -> str:
    """The gRPC target for an address setting (raises AddressError when it is malformed)."""
    address = address.strip()
    if address.startswith(SCHEMES):
        if not address.partition(":")[2].strip("/"):
            raise AddressError(f"{address!r} names no host")
        return address
    pairs = endpoints(address)
    if len(pairs) == 1:
        return address  # gRPC resolves a name (every address DNS gives) or takes the literal as it is
    if _family(pairs[0][0]) == 6:
        return "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in pairs)
    return "ipv4:" + ",".join(f"{h}:{p}" for h, p in pairs)


def listed(address: str) -> int:
    """How many replicas the address itself lists (a DNS name, however many addresses it has: 1)."""
    return address.count(",") + 1


def single_port(address: str) -> int | None:
    """The port of an address naming one host:port; None for a list or a target with a scheme (which
    does not say which replica a process is)."""
    pairs = [] if address.strip().startswith(SCHEMES) else endpoints(address.strip())
    return pairs[0][1] if len(pairs) == 1 else None
