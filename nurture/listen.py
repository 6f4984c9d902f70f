"""Binding a listening port, with a few seconds' patience.

The mesh's default ports (gRPC 50051-50055, the API contract's) lie in Linux's ephemeral range
(/proc/sys/net/ipv4/ip_local_port_range, 32768-60999 by default): the kernel may hand one to an outgoing
connection as its source port, and a service starting then failed "address in use" with nothing listening
there (`make run` failed on a first try and worked on the second). Such a hold lasts as long as that
connection, usually well under a second, so every listener `nurture up` starts (the gRPC servers, the
gateway, the SMTP sinks, the emulators) tries again for BIND_RETRY_S before it gives up, and then says
which port and what to do.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Awaitable, Callable

# Long enough for an outgoing connection holding the port as its source to end; short enough that a port
# another server really holds is reported within a start's patience (`nurture up` waits far longer).
BIND_RETRY_S = 5.0
_PAUSE_S = 0.1


class PortInUse(OSError):
    """A port still in use after BIND_RETRY_S."""

    def __init__(self, name: str, host: str, port: int, waited: float) -> None:
        super().__init__(errno.EADDRINUSE, port_in_use_message(name, host, port, waited))
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


def port_in_use_message(name: str, host: str, port: int, waited: float) -> str:
    return (f"{name}: cannot listen on {host}:{port}: the port is in use (tried for {waited:g} s); another "
            f"process holds it (another `nurture up`?): stop it, or start with --port-offset N to move every "
            f"port of the mesh (e.g. --port-offset 100)")


def _in_use(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EACCES)


def _bound_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, SO_REUSEADDR as asyncio's and uvicorn's own (a port whose
    last connections are in TIME_WAIT can be bound at once)."""
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


def _attempt(name: str, host: str, port: int, deadline: float, retry_s: float) -> socket.socket | None:
    """One try at binding: the socket, None to try again (the port in use, time left), else the error."""
    try:
        return _bound_socket(host, port)
    except OSError as exc:
        if not _in_use(exc) or port == 0:
            raise
        if time.monotonic() >= deadline:
            raise PortInUse(name, host, port, retry_s) from exc
    return None


def listening_socket(name: str, host: str, port: int, *, retry_s: float = BIND_RETRY_S) -> socket.socket:
    """A socket listening on host:port (for uvicorn's `sockets=`, asyncio's `sock=`), trying again while
    the port is in use for up to `retry_s`; then PortInUse, which names the port. Port 0: any free one."""
    deadline = time.monotonic() + retry_s
    while (sock := _attempt(name, host, port, deadline, retry_s)) is None:
        time.sleep(_PAUSE_S)
    return sock


async def listening_socket_async(name: str, host: str, port: int, *,
                                 retry_s: float = BIND_RETRY_S) -> socket.socket:
    """listening_socket without blocking the running loop while it waits."""
    deadline = time.monotonic() + retry_s
    while (sock := _attempt(name, host, port, deadline, retry_s)) is None:
        await asyncio.sleep(_PAUSE_S)
    return sock


def serve_asgi(name: str, app: Callable[..., Awaitable[None]], host: str, port: int) -> None:
    """Serve an ASGI app (the CRM and ads emulators) on host:port until stopped, the port tried again
    while it is in use (listening_socket); a port still held exits naming it."""
    import uvicorn  # (the services that serve no HTTP do not load it)

    try:
        sock = listening_socket(name, host, port)
    except PortInUse as exc:
        raise SystemExit(str(exc)) from None
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", http="httptools",
                            loop="asyncio")
    uvicorn.Server(config).run(sockets=[sock])


async def bind_retrying(name: str, host: str, port: int, bind: Callable[[], int], *,
                        retry_s: float = BIND_RETRY_S) -> int:
    """Call `bind` (which binds host:port and returns the port bound, 0 or a RuntimeError when it could
    not: grpc's add_insecure_port, which owns its socket) until it succeeds, for up to `retry_s`; then
    PortInUse. grpc does not say why a bind failed; any failure is retried, as "in use" is the one that
    passes."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            bound = bind()
        except RuntimeError:
            bound = 0
        if bound:
            return bound
        if time.monotonic() >= deadline:
            raise PortInUse(name, host, port, retry_s)
        await asyncio.sleep(_PAUSE_S)
