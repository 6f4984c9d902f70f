"""A listener whose port is held for a moment (an outgoing connection's source port: the mesh's default ports
lie in the OS's ephemeral range) waits for it; one held for good fails naming the port and --port-offset.
`make run` failed "Failed to bind" on a first try with nothing listening there, and worked on the second."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nurture.listen import PortInUse
from nurture.ports import free_port
from nurture.rpc import health_status, start_server

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[3]


def _hold(port: int) -> socket.socket:
    """The port bound and not listening, as a connection's source port is (no SO_REUSEADDR)."""
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    return s


def _release_later(s: socket.socket, seconds: float = 0.5) -> threading.Timer:
    timer = threading.Timer(seconds, s.close)
    timer.start()
    return timer


async def test_a_service_whose_port_is_held_for_a_moment_starts_once_it_is_free() -> None:
    port = free_port()
    held = _hold(port)
    _release_later(held)
    handle = await start_server(name="scoring", port=port, register=lambda server: [], mesh_tokens=["t" * 32])
    try:
        assert handle.port == port
        assert await health_status(f"127.0.0.1:{port}") == "SERVING"
    finally:
        await handle.stop(0)


async def test_a_grpc_port_held_for_good_fails_naming_the_port_and_the_offset() -> None:
    port = free_port()
    with _hold(port), pytest.raises(PortInUse) as caught:
        await start_server(name="scoring", port=port, register=lambda server: [], mesh_tokens=["t" * 32],
                           bind_retry_s=0.3)
    message = str(caught.value)
    assert f"scoring: cannot listen on 127.0.0.1:{port}" in message, message
    assert "in use" in message and "--port-offset" in message, message


def _run(module: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env["NURTURE_ADS_TOKEN"] = "t" * 32
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("module", ["services.messaging.smtp_sink", "services.crm_sync.emulator",
                                    "services.messaging.ads_emulator"])
async def test_a_local_stand_in_whose_port_is_held_for_a_moment_listens_once_it_is_free(
        module: str, tmp_path: Path) -> None:
    port = free_port()
    held = _hold(port)
    extra = ["--dir", str(tmp_path)] if module.endswith("smtp_sink") else ["--data-dir", str(tmp_path)]
    proc = _run(module, "--port", str(port), *extra)
    try:
        await asyncio.sleep(0.5)
        held.close()
        for _ in range(600):   # bounded by the start, not by a time this asserts
            if _listening(port) or proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        assert _listening(port)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


async def test_a_local_stand_in_whose_port_is_held_for_good_exits_naming_it(tmp_path: Path) -> None:
    port = free_port()
    with _hold(port):
        proc = _run("services.crm_sync.emulator", "--port", str(port), "--data-dir", str(tmp_path))
        _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 1, err
    assert f"crm emulator: cannot listen on 127.0.0.1:{port}" in err and "--port-offset" in err, err
    assert "Traceback" not in err, err
