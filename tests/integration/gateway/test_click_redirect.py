"""The click redirect (`GET /t/c/<token>`) against a real messaging service: it follows only a signed
http(s) destination; a signed token whose target is anything else is refused, not redirected."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import create_app
from nurture.settings import SERVICES, Settings
from services.messaging.domain.tokens import Signer, Token
from tests.conftest import free_port, mesh_channel, start_service

pytestmark = pytest.mark.anyio


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    cfg = settings.with_overrides(**addrs)
    messaging = await start_service("messaging", cfg)
    app = create_app(cfg.with_overrides(api_key="test-key", messaging_addr=messaging.address))
    for s in SERVICES:
        app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        yield client
    await messaging.stop(grace=0.2)


def click(settings: Settings, url: str) -> str:
    return Signer(settings.secret).sign(Token("click", "m-unknown", "l-1", url=url, link=0))


@pytest.mark.parametrize("url", ["https://www.borderbridge.example/pricing", "http://partner.example/x?y=1"])
async def test_a_signed_http_destination_is_followed(gateway: httpx.AsyncClient, settings: Settings,
                                                     url: str) -> None:
    r = await gateway.get(f"/t/c/{click(settings, url)}")
    assert r.status_code == 302 and r.headers["location"] == url


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:text/html,<script>x</script>", "ftp://files.example/a",
                                 "//evil.example/", "/relative", "mailto:a@example.com",
                                 " https://space.example", "httpx://odd.example", ""])
async def test_a_signed_destination_that_is_not_http_is_refused(gateway: httpx.AsyncClient, settings: Settings,
                                                                url: str) -> None:
    r = await gateway.get(f"/t/c/{click(settings, url)}")
    assert r.status_code == 400, r.headers
    assert "location" not in r.headers
    assert r.json()["error"]["code"] == "invalid_link"


async def test_a_token_signed_with_another_secret_is_refused(gateway: httpx.AsyncClient) -> None:
    forged = Signer("not-the-secret").sign(Token("click", "m-1", "l-1", url="https://evil.example/"))
    r = await gateway.get(f"/t/c/{forged}")
    assert r.status_code == 400 and "location" not in r.headers
