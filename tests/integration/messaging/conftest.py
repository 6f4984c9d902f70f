"""The messaging test mesh: a real service in this process (virtual clock), a real aiosmtpd sink, a real
gRPC scoring servicer that records what messaging asks of it.

`inproc` is the same engine without any gRPC: the engine, its bus handler (Channels), a real Redis, a
real SQLite database and a real SMTP sink, with leads served in process. Its tests are fast enough to
run for every mutant (`make mutate`)."""

from __future__ import annotations

import asyncio
import contextlib
import email
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import policy
from pathlib import Path
from typing import Any

import pytest

from nurture import busmessage, jsoncodec
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.clock import VirtualClock
from nurture.redisconn import connect_sync
from nurture.service import Running
from nurture.settings import Settings
from services.messaging.smtp_sink import SmtpSink
from services.messaging.storage import Message
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.messaging.harness import InProcessLeads, ScoringStub, start_scoring_stub


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
                   channel: str = "email", context: dict[str, Any] | None = None,
                   budget_exempt: bool = False) -> messaging_pb2.SendReply:
        journey, _, step = template.partition(".")
        return await self.stub.Send(messaging_pb2.SendRequest(
            dedupe_key=key or f"{lead_id}:{journey}:1:{step}:0", lead_id=lead_id, journey=journey, journey_version=1,
            step=step, channel=channel, template=template, category=category,
            context_json=json.dumps(context or {}), budget_exempt=budget_exempt), timeout=5)

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


@dataclass
class InProc:
    settings: Settings
    scoring: ScoringStub
    sink: SmtpSink
    engine: Any
    channels: Any
    clock: VirtualClock
    db: Any

    async def send(self, lead_id: str, template: str, *, key: str = "", category: str = "",
                   channel: str = "email", context: dict[str, Any] | None = None, budget_exempt: bool = False) -> Any:
        journey, _, step = template.partition(".")
        return await self.engine.send(
            dedupe_key=key or f"{lead_id}:{journey}:1:{step}:0", lead_id=lead_id, journey=journey,
            journey_version=1, step=step, channel=channel, template=template, category=category,
            context_json=json.dumps(context or {}), not_before=None, budget_exempt=budget_exempt)

    async def settle(self) -> int:
        # Bounded: a worker that re-defers a message to the same instant spins forever (a cap bound
        # off by one does that); fail in seconds instead of at the suite's timeout.
        done: int = await asyncio.wait_for(self.engine.process_due(), 15)
        done += await self.engine.flush_feedback()
        return done

    async def bus(self, *messages: dict[str, Any] | busmessage.BusMessage) -> None:
        """Hand bus messages (records, or their JSON objects as an older producer wrote them) to
        messaging's handler as its consumer would: through the wire, decoded by the bus codec."""
        await self.channels.handle_bus([
            busmessage.decode(busmessage.encode(m) if isinstance(m, busmessage.BusMessage) else jsoncodec.dumps(m))
            for m in messages])

    async def messages(self, lead_id: str) -> dict[str, Message]:
        """template -> the latest message row of it (status, reason, due_at, attempts, subject)."""
        rows = await self.db.run(self.engine.store.list_messages, lead_id, 100)
        return {r.template: r for r in reversed(rows)}   # newest first: the latest wins

    def mails_to(self, address: str) -> int:
        return sum(1 for p in self.sink.messages() if address in p.read_text(errors="replace").split("\n", 1)[0])


@pytest.fixture
async def inproc(settings: Settings, tmp_path: Path) -> AsyncIterator[InProc]:
    from nurture.db import open_database
    from nurture.redisconn import connect
    from services.messaging.app.channels import Channels
    from services.messaging.app.delivery import Delivery
    from services.messaging.domain.catalog import Catalog
    from services.messaging.domain.policy import load_policy
    from services.messaging.server import MIGRATIONS
    from services.messaging.storage import Store

    scoring = ScoringStub()
    sink = SmtpSink(tmp_path / "mail").start()
    cfg = settings.with_overrides(smtp_url=sink.url, public_url="https://nurture.example")
    db = open_database(cfg, service="messaging", migrations_dir=MIGRATIONS)
    redis = connect(cfg)
    clock = VirtualClock(connect_sync(cfg))
    engine = Delivery(settings=cfg, clock=clock, db=db, store=Store(db.session), catalog=Catalog(), redis=redis,
                    leads=InProcessLeads(scoring), policy=load_policy())  # type: ignore[arg-type]
    try:
        yield InProc(cfg, scoring, sink, engine, Channels(engine, None), clock, db)
    finally:
        await engine.close()
        await redis.aclose()
        db.close()
        sink.stop()
