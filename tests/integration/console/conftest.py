"""The console's fixtures: the real gateway app with keys of every role and a session secret, over a
real scoring service (the other services on closed ports unless a test starts them)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI

from gateway.app import create_app
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.bus import Publisher
from nurture.busmessage import BusMessage
from nurture.settings import SERVICES, Settings
from tests.conftest import free_port, mesh_channel, start_service

KEYS = {"admin": "test-key", "editor": "editor-key-0123456789", "viewer": "viewer-key-0123456789"}
SESSION_SECRET = "test-session-secret-0123456789"


def console_settings(settings: Settings, **addrs: str) -> Settings:
    return settings.with_overrides(api_key=KEYS["admin"], session_secret=SESSION_SECRET,
                                   api_keys={KEYS["editor"]: "editor", KEYS["viewer"]: "viewer"}, **addrs)


def app_for(settings: Settings) -> FastAPI:
    app = create_app(settings)
    for s in SERVICES:
        app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))
    return app


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    form = await client.get("/console/sign-in")
    return await client.post("/console/sign-in", data={"csrf": csrf_of(form.text), "api_key": key,
                                                       "next": "/console/journeys"})


@pytest.fixture
async def console(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    scoring = await start_service("scoring", settings)
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    addrs["scoring_addr"] = scoring.address
    app = app_for(console_settings(settings, **addrs))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        yield client, app
    await scoring.stop(grace=0.2)


@asynccontextmanager
async def console_over_analytics(settings: Settings, stream: list[dict[str, Any]]) -> AsyncIterator[httpx.AsyncClient]:
    """The console signed in as a viewer, over the real analytics service once it has folded `stream`
    (bus messages) from the real bus; `client.app` is the gateway app, for a browser test to serve."""
    redis_client = aioredis.Redis.from_url(settings.redis_url)
    service = await start_service("analytics", settings)
    try:
        await Publisher(redis_client, settings.bus_shards).publish([BusMessage.from_dict(m) for m in stream])
        async with mesh_channel(service.address) as ch:
            await common_pb2_grpc.AdminStub(ch).Settle(common_pb2.SettleRequest(), timeout=60)
        addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
        addrs["analytics_addr"] = service.address
        app = app_for(console_settings(settings, **addrs))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            await sign_in(client, KEYS["viewer"])
            client.app = app  # type: ignore[attr-defined]
            yield client
    finally:
        await service.stop(grace=0.2)
        await redis_client.aclose()
