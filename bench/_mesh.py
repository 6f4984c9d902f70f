"""Start a private mesh (`nurture up` on free ports in a temporary data dir) for a benchmark."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from nurture.ports import free_port


@dataclass
class Mesh:
    url: str
    api_key: str
    env: dict[str, str]  # NURTURE_MESH_TOKEN signs gRPC calls; NURTURE_REDIS_URL carries the password
    data_dir: str


@contextmanager
def private_mesh(clock: str = "real") -> Iterator[Mesh]:
    data = tempfile.mkdtemp(prefix="nurture-bench-")
    http = free_port()
    redis_password = secrets.token_urlsafe(24)
    env = {**os.environ, "NURTURE_REDIS_URL": f"redis://:{redis_password}@127.0.0.1:{free_port()}/0",
           "NURTURE_EMBEDDED_REDIS": "1", "NURTURE_MESH_TOKEN": secrets.token_urlsafe(24),
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
