"""A small mesh for crm_sync tests: real Redis, the real scoring service, the CRM emulator as its own
process on a free port (so it can be taken down and brought back), and crm_sync itself."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.crm_sync.v1 import crm_sync_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2_grpc
from nurture.clock import VirtualClock
from nurture.service import Running
from nurture.settings import Settings
from tests.conftest import free_port, mesh_channel, start_service

TOKEN = "test-crm-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


class Emulator:
    """The emulator process; `stop()` and `start()` take the CRM down and bring it back (same port,
    same data dir, so its state survives)."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "services.crm_sync.emulator", "--port", str(self.port),
                                      "--data-dir", str(self.data_dir)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/_emulator/stats", timeout=0.5)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("emulator did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def get(self, path: str) -> Any:
        return httpx.get(f"{self.url}{path}", timeout=5).json()

    def post(self, path: str, body: Any) -> Any:
        return httpx.post(f"{self.url}{path}", json=body, timeout=5).json()

    def fault(self, **fault: Any) -> None:
        self.post("/_emulator/faults", fault)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    emu = Emulator(tmp_path / "crm")
    emu.start()
    yield emu
    emu.stop()


@dataclass
class Mesh:
    settings: Settings
    scoring: scoring_pb2_grpc.ScoringStub
    crm: crm_sync_pb2_grpc.CrmSyncStub
    sales: crm_sync_pb2_grpc.SalesOpsStub
    admin: common_pb2_grpc.AdminStub
    scoring_admin: common_pb2_grpc.AdminStub
    clock: VirtualClock
    emulator: Emulator
    running: Running

    async def settle(self, rounds: int = 20) -> None:
        """Settle scoring and crm_sync at the current instant until neither has work."""
        for _ in range(rounds):
            a = await self.scoring_admin.Settle(common_pb2.SettleRequest(), timeout=30)
            b = await self.admin.Settle(common_pb2.SettleRequest(), timeout=30)
            if a.work_done == 0 and b.work_done == 0:
                return

    async def advance(self, seconds: float, step: float | None = None) -> None:
        """Move virtual time, settling at every due time crm_sync reports (as the gateway does)."""
        target = self.clock.now().timestamp() + seconds
        while True:
            await self.settle()
            reply = await self.admin.Settle(common_pb2.SettleRequest(), timeout=30)
            nxt = reply.next_due_at.ToDatetime().timestamp() if reply.has_next_due else None
            now = self.clock.now().timestamp()
            if nxt is None or nxt > target:
                self.clock.advance(target - now)
                await self.settle()
                return
            self.clock.advance(max(0.0, nxt - now) + 0.001)

    async def timeline(self, lead_id: str) -> list[common_pb2.TimelineItem]:
        reply = await self.admin.Timeline(common_pb2.TimelineRequest(lead_id=lead_id), timeout=5)
        return list(reply.items)


@pytest.fixture
async def mesh(settings: Settings, emulator: Emulator) -> AsyncIterator[Mesh]:
    scoring = await start_service("scoring", settings)
    crm_settings = settings.with_overrides(crm_url=emulator.url, scoring_addr=scoring.address,
                                           journeys_addr=f"127.0.0.1:{free_port()}", crm_tokens={"test-crm": TOKEN})
    running = await start_service("crm_sync", crm_settings)
    s_channel = mesh_channel(scoring.address)
    c_channel = mesh_channel(running.address)
    try:
        yield Mesh(settings=crm_settings, scoring=scoring_pb2_grpc.ScoringStub(s_channel),
                   crm=crm_sync_pb2_grpc.CrmSyncStub(c_channel), sales=crm_sync_pb2_grpc.SalesOpsStub(c_channel),
                   admin=common_pb2_grpc.AdminStub(c_channel), scoring_admin=common_pb2_grpc.AdminStub(s_channel),
                   clock=VirtualClock(redis.Redis.from_url(settings.redis_url)), emulator=emulator, running=running)
    finally:
        await c_channel.close()
        await s_channel.close()
        await asyncio.wait_for(running.stop(grace=0.5), 10)
        await asyncio.wait_for(scoring.stop(grace=0.5), 10)
