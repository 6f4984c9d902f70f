"""The website tracking tests' mesh: real scoring, messaging (with an SMTP sink) and journeys services in
this process, and the gateway app with one site key for a test site's origin."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from gateway.app import create_app
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.service import Running
from nurture.settings import SERVICES, Settings
from services.messaging.smtp_sink import SmtpSink
from tests.conftest import free_port, mesh_channel, start_service

API_KEY = "tracking-test-api-key"
SITE_KEY = "site-key-for-tests-0123456789"
SITE = "http://site.example"


@dataclass
class TrackingMesh:
    app: FastAPI
    client: httpx.AsyncClient     # the gateway, in process
    settings: Settings            # the gateway's
    sink: SmtpSink

    services: dict[str, Running]

    async def settle(self) -> None:
        """Every running service handles what is due now (bus messages, queued sends), until all are idle."""
        for _ in range(50):
            work = 0
            for running in self.services.values():
                async with mesh_channel(running.address) as ch:
                    reply = await common_pb2_grpc.AdminStub(ch).Settle(common_pb2.SettleRequest(), timeout=30)
                    work += reply.work_done
            if not work:
                return
        raise AssertionError("the services did not settle")

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    async def api(self, method: str, path: str, **kwargs: Any) -> Any:
        r = await self.client.request(method, path, headers=self.auth, **kwargs)
        assert r.status_code < 300, (path, r.status_code, r.text)
        return r.json()


def site_keys(origins: list[str], **extra: Any) -> str:
    return json.dumps({SITE_KEY: {"origins": origins, **extra}})


@asynccontextmanager
async def tracking_mesh(settings: Settings, tmp_path: Path, *, origins: tuple[str, ...] = (SITE,),
                        services: tuple[str, ...] = ("scoring", "messaging", "journeys"),
                        **key_config: Any) -> AsyncIterator[TrackingMesh]:
    sink = SmtpSink(tmp_path / "mail").start()
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    cfg = settings.with_overrides(smtp_url=sink.url, **addrs)
    running: dict[str, Running] = {}
    for name in services:
        running[name] = await start_service(name, cfg.with_overrides(**addrs))
        addrs[f"{name}_addr"] = running[name].address
    gw_settings = cfg.with_overrides(api_key=API_KEY, site_keys=site_keys(list(origins), **key_config), **addrs)
    app = create_app(gw_settings)
    inner: FastAPI = app.app  # type: ignore[attr-defined]
    for s in SERVICES:
        inner.state.mesh.channels[s] = mesh_channel(gw_settings.address_of(s))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            yield TrackingMesh(app=app, client=client, settings=gw_settings, sink=sink, services=running)
    finally:
        for ch in inner.state.mesh.channels.values():
            await ch.close()
        await inner.state.tracking.limits.close()
        for r in reversed(list(running.values())):
            await r.stop(grace=0.2)
        sink.stop()
