"""A service as a real process, for the kill tests: spawn it, wait until it serves, SIGKILL it, again."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from nurture.rpc import health_status
from nurture.settings import Settings, to_environ

ROOT = Path(__file__).resolve().parents[2]


def spawn_service(service: str, settings: Settings, *, log: Path | None = None) -> subprocess.Popen[bytes]:
    """`python -m services.<service>` from the repository root, configured through its environment by
    `settings`; its stderr is appended to `log` (kept for a failure's post-mortem), else dropped."""
    env = {**os.environ, **to_environ(settings), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", f"services.{service}"]
    if log is None:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with log.open("ab") as err:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)


async def wait_serving(address: str, attempts: int = 400) -> None:
    """Until the gRPC server at `address` reports SERVING (start_server sets it once every servicer is
    registered)."""
    for _ in range(attempts):
        if await health_status(address, timeout=0.5) == "SERVING":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{address} did not come up")


def wait_answering(probe: Callable[[], object], attempts: int = 300) -> None:
    """Until `probe()`, a blocking call on the test's own channel, stops failing: after a restart that
    also takes the channel out of its reconnect backoff, which a probe on a channel of its own would not."""
    for _ in range(attempts):
        try:
            probe()
            return
        except grpc.RpcError:
            time.sleep(0.05)
    raise AssertionError("the service did not come up")
