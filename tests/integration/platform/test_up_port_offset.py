"""`nurture up --port-offset N` (the real CLI in a subprocess): a second mesh beside one on the default ports
moves every port it listens on by N. Each moved port is held here, so `up` refuses to start and names every
one it needs, each moved by N (before any process starts); without the option a second `make run` needed a
dozen NURTURE_* settings, some of them (NURTURE_EMBEDDED_*) documented nowhere."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DEFAULTS = {"gateway": 8080, "redis": 6390, "smtp-sink": 2525, "crm-emulator": 8090, "ads-emulator": 8092,
            "scoring": 50051,
            "journeys": 50052, "messaging": 50053, "crm_sync": 50054, "analytics": 50055,
            "messaging's bounce receiver (NURTURE_BOUNCE_SMTP_ADDR)": 2526}


def _hold_all(offset: int) -> list[socket.socket] | None:
    held: list[socket.socket] = []
    for port in DEFAULTS.values():
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port + offset))
        except OSError:
            s.close()
            for h in held:
                h.close()
            return None
        s.listen()
        held.append(s)
    return held


def test_every_port_moves_by_the_offset(tmp_path: Path) -> None:
    offset, held = next((n, h) for n in range(1000, 9000, 97) if (h := _hold_all(n)) is not None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    try:
        proc = subprocess.run([sys.executable, "-m", "cli", "up", "--data-dir", str(tmp_path / "data"),
                               "--port-offset", str(offset)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
    finally:
        for s in held:
            s.close()
    assert proc.returncode == 1, proc.stderr
    named = dict((n, int(p)) for n, p in re.findall(r"(?:^cannot start: |, )(.+?) needs port (\d+)", proc.stderr))
    assert named == {name: port + offset for name, port in DEFAULTS.items()}, proc.stderr
    assert "--port-offset" in proc.stderr


def test_an_offset_out_of_range_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cli", "up", "--data-dir", str(tmp_path / "data"),
                           "--port-offset", "70000"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--port-offset" in proc.stderr
