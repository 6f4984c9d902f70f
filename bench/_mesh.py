"""Start a private mesh (`nurture up` on free ports in a temporary data dir) for a benchmark."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


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


@dataclass
class Mesh:
    url: str
    api_key: str
    env: dict[str, str]
    data_dir: str


@contextmanager
def private_mesh(clock: str = "real") -> Iterator[Mesh]:
    data = tempfile.mkdtemp(prefix="nurture-bench-")
    http = free_port()
    env = {**os.environ, "NURTURE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "NURTURE_EMBEDDED_REDIS": "1",
           "NURTURE_SMTP_URL": f"smtp://127.0.0.1:{free_port()}", "NURTURE_CRM_URL": f"http://127.0.0.1:{free_port()}",
           "NURTURE_LOG_LEVEL": "WARNING", "NURTURE_EMBEDDED_SMTP": "1", "NURTURE_EMBEDDED_CRM": "1"}
    for service in ("scoring", "journeys", "messaging", "crm_sync"):
        env[f"NURTURE_{service.upper()}_ADDR"] = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "nurture.cli", "up", "--data-dir", data, "--http-port", str(http),
                             "--clock", clock, "--api-key", "bench-key"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"nurture up failed:\n{proc.stdout.read() if proc.stdout else ''}")
            time.sleep(0.2)
        yield Mesh(url=url, api_key="bench-key", env=env, data_dir=data)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
