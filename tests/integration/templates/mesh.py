"""A mesh for the templates' tests: real scoring, messaging (with an aiosmtpd sink) and journeys services
over gRPC, and the gateway app with a key of every role (the console's settings)."""

from __future__ import annotations

import email
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email import policy
from pathlib import Path

import httpx
from fastapi import FastAPI

from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.service import Running
from nurture.settings import SERVICES, Settings
from services.messaging.smtp_sink import SmtpSink
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.console.conftest import KEYS, app_for, console_settings


@dataclass
class TemplatesMesh:
    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings
    sink: SmtpSink
    messaging: messaging_pb2_grpc.MessagingStub
    messaging_admin: common_pb2_grpc.AdminStub
    started: dict[str, Running] = field(default_factory=dict)   # the running services by name, in start order

    async def stop(self, service: str) -> None:
        """Stop one service now (a test of what the others do while it is down)."""
        await self.started.pop(service).stop(grace=0.2)

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEYS[role]}"}

    async def add_lead(self, lead_id: str, **extra: object) -> None:
        body = {"id": lead_id, "email": f"{lead_id}@example.com", "first_name": "Ana", "consent": {"email": True},
                "timezone": "UTC", "attributes": {"profession": "nurse", "countries_of_interest": ["CA"]}, **extra}
        r = await self.client.post("/v1/leads", headers=self.headers("editor"), json=body)
        assert r.status_code in (200, 201), r.text

    async def send(self, lead_id: str, template: str, occurrence: int = 0) -> str:
        journey, _, step = template.partition(".")
        reply = await self.messaging.Send(messaging_pb2.SendRequest(
            dedupe_key=f"{lead_id}:{journey}:1:{step}:{occurrence}", lead_id=lead_id, journey=journey,
            journey_version=1, step=step, channel="email", template=template, category="transactional",
            context_json=json.dumps({})), timeout=10)
        assert reply.status == "scheduled", reply
        await self.messaging_admin.Settle(common_pb2.SettleRequest(), timeout=30)
        return reply.message_id

    def mails(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(p.read_bytes(), policy=policy.default)  # type: ignore[misc]
                for p in sorted(self.sink.messages())]


@asynccontextmanager
async def templates_mesh(settings: Settings, tmp_path: Path,
                         extra: tuple[str, ...] = ()) -> AsyncIterator[TemplatesMesh]:
    """`extra`: more services to start after these three (e.g. analytics)."""
    sink = SmtpSink(tmp_path / "mail").start()
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    base = dict(smtp_url=sink.url, public_url="https://nurture.example")
    started: dict[str, Running] = {}
    try:
        for name in ("scoring", "messaging", "journeys", *extra):
            # On the address the services started before it were given: journeys asks crm_sync (started
            # after it) for its sales tasks, and a free port of its own left journeys calling nothing.
            running = await start_service(name, settings.with_overrides(**base, **addrs),
                                          port=int(addrs[f"{name}_addr"].rpartition(":")[2]))
            started[name] = running
            addrs[f"{name}_addr"] = running.address
        app = app_for(console_settings(settings, **base, **addrs))
        channel = mesh_channel(addrs["messaging_addr"])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://gw") as http:
            yield TemplatesMesh(app, http, settings.with_overrides(**base, **addrs), sink,
                                messaging_pb2_grpc.MessagingStub(channel), common_pb2_grpc.AdminStub(channel),
                                started)
        await channel.close()
    finally:
        for running in reversed(list(started.values())):
            await running.stop(grace=0.2)
        sink.stop()
