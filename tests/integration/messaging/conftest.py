"""The messaging test mesh: a real service in this process (virtual clock), a real aiosmtpd sink, a real
gRPC scoring servicer that records what messaging asks of it."""

from __future__ import annotations

import contextlib
import email
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import policy
from pathlib import Path
from typing import Any

import pytest

from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.clock import VirtualClock
from nurture.redisconn import connect_sync
from nurture.service import Running
from nurture.settings import Settings
from services.messaging.smtp_sink import SmtpSink
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.messaging.harness import ScoringStub, start_scoring_stub


@dataclass
class Mesh:
    settings: Settings
    scoring: ScoringStub
    sink: SmtpSink
    running: Running
    stub: messaging_pb2_grpc.MessagingStub
    admin: common_pb2_grpc.AdminStub
    clock: VirtualClock

    async def send(self, lead_id: str, template: str, *, key: str = "", category: str = "",
                   channel: str = "email", context: dict[str, Any] | None = None) -> messaging_pb2.SendReply:
        journey, _, step = template.partition(".")
        return await self.stub.Send(messaging_pb2.SendRequest(
            dedupe_key=key or f"{lead_id}:{journey}:1:{step}:0", lead_id=lead_id, journey=journey, journey_version=1,
            step=step, channel=channel, template=template, category=category,
            context_json=json.dumps(context or {})), timeout=5)

    async def settle(self) -> common_pb2.SettleReply:
        reply = await self.admin.Settle(common_pb2.SettleRequest(), timeout=10)
        return reply

    async def messages(self, lead_id: str) -> list[messaging_pb2.Message]:
        return list((await self.stub.ListMessages(messaging_pb2.ListMessagesRequest(lead_id=lead_id), timeout=5)).items)

    def mails(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(p.read_bytes(), policy=policy.default)  # type: ignore[misc]
                for p in self.sink.messages()]


@pytest.fixture
async def mesh(settings: Settings, tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(settings, tmp_path) as m:
        yield m


@contextlib.asynccontextmanager
async def running_mesh(settings: Settings, tmp_path: Path, **overrides: Any) -> AsyncIterator[Mesh]:
    """The messaging service with a scoring stub and a real SMTP sink; `overrides` change its settings."""
    scoring, scoring_server = await start_scoring_stub()
    sink = SmtpSink(tmp_path / "mail").start()
    cfg = settings.with_overrides(smtp_url=sink.url, scoring_addr=f"127.0.0.1:{scoring_server.port}",
                                  journeys_addr=f"127.0.0.1:{free_port()}", public_url="https://nurture.example",
                                  **overrides)
    running = await start_service("messaging", cfg)
    ch = mesh_channel(running.address)
    try:
        yield Mesh(cfg, scoring, sink, running, messaging_pb2_grpc.MessagingStub(ch),
                   common_pb2_grpc.AdminStub(ch), VirtualClock(connect_sync(cfg)))
    finally:
        await ch.close()
        await running.stop(0)
        await scoring_server.stop(0)
        sink.stop()
