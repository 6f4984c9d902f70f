"""Free local ports for servers a test or a benchmark is about to start."""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path


def free_port() -> int:
    """A port nothing listens on, for a server this process is about to start.

    Picked below the kernel's ephemeral range (ip_local_port_range): a port bind(0) hands out is
    one the kernel may also give an outgoing connection before our server binds it (seen: the
    gateway failing with "address already in use" on a benchmark's fresh mesh). Never the same port
    twice in one process."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(10000, low) if low > 11000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port found")


_HANDED_OUT: set[int] = set()
