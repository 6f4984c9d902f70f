"""Every process of the mesh, started as in production (`python -m ...`) and bound beyond loopback,
refuses to start without its secrets and names each missing one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nurture.ports import free_port
from nurture.settings import SERVICES

ROOT = Path(__file__).resolve().parents[3]
SECRETS = ("NURTURE_SECRET", "NURTURE_API_KEY", "NURTURE_MESH_TOKEN", "NURTURE_CRM_TOKENS")


@pytest.mark.parametrize("module", [*(f"services.{s}" for s in SERVICES), "gateway"])
def test_beyond_loopback_without_secrets_a_process_refuses_naming_them(module: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    # Free ports everywhere: should it start after all, it must not take a running mesh's ports.
    env.update({"NURTURE_BIND_HOST": "0.0.0.0", "NURTURE_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT),
                "NURTURE_GRPC_PORT": str(free_port()), "NURTURE_HTTP_PORT": str(free_port()),
                "NURTURE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                **{f"NURTURE_{s.upper()}_ADDR": f"127.0.0.1:{free_port()}" for s in SERVICES}})
    proc = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"{module} started beyond loopback without secrets") from None
    assert proc.returncode != 0
    assert "cannot start" in err and "Traceback" not in err, err
    for name in SECRETS:
        assert name in err, err
