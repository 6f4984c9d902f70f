"""The gateway tests' fixture: the real gateway app over a real scoring service (other services: closed
ports, so the gateway must answer 503 for them, not hang)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from gateway.app import create_app
from nurture.service import Running
from nurture.settings import SERVICES, Settings
from tests.conftest import free_port, mesh_channel, start_service


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI, Running]]:
    scoring = await start_service("scoring", settings)
    # Services this test does not start point at a closed port: the gateway must say 503, not hang.
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    addrs["scoring_addr"] = scoring.address
    app = create_app(settings.with_overrides(api_key="test-key", max_body_bytes=64_000, max_batch=50, **addrs))
    for s in SERVICES:
        app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield client, app, scoring
    await scoring.stop(grace=0.2)
