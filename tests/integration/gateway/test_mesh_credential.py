"""The gateway's own channels (built at start-up from its settings) sign their calls with the mesh key;
a gateway given the wrong key answers 500 (its own misconfiguration), not 401 (the client's key was fine)."""

from __future__ import annotations

import httpx
import pytest

from gateway.app import create_app
from nurture.service import Running
from nurture.settings import SERVICES, Settings
from tests.conftest import free_port

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": "Bearer test-key"}


async def get_lead(settings: Settings, scoring: Running) -> httpx.Response:
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    addrs["scoring_addr"] = scoring.address
    app = create_app(settings.with_overrides(api_key="test-key", **addrs))
    # The lifespan opens the mesh channels as `python -m gateway` does.
    async with app.router.lifespan_context(app), \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        return await client.get("/v1/leads/nobody", headers=AUTH)


async def test_the_gateway_signs_with_its_mesh_key(settings: Settings, scoring: Running) -> None:
    r = await get_lead(settings, scoring)
    assert r.status_code == 404, r.text


async def test_a_gateway_with_the_wrong_mesh_key_answers_500_not_401(settings: Settings, scoring: Running) -> None:
    r = await get_lead(settings.with_overrides(mesh_token="not-the-mesh-key"), scoring)
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert error["code"] == "internal" and "refused its credential" in error["message"]
    assert "NURTURE_MESH_TOKEN" not in r.text
