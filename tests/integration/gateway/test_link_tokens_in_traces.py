"""A tracking or unsubscribe link's token acts for its lead: the gateway's spans show the route, not it."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import create_app
from nurture.settings import SERVICES, Settings
from services.messaging.domain.tokens import Signer, Token
from tests.conftest import free_port, mesh_channel

pytestmark = pytest.mark.anyio


async def test_link_tokens_stay_out_of_traces(settings: Settings, spans: InMemorySpanExporter) -> None:
    app = create_app(settings.with_overrides(**{f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}))
    for s in SERVICES:  # nothing listens there: the routes answer 503, traced all the same
        app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))
    token = Signer(settings.secret).sign(Token("unsubscribe", "m-1", "lead-1"))
    spans.clear()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        for path in (f"/u/{token}", f"/t/c/{token}", f"/t/o/{token}"):
            await client.get(path)
        await client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    seen = [(s.name, dict(s.attributes or {})) for s in spans.get_finished_spans()]
    assert {name for name, _ in seen} >= {"GET /u/{token}", "GET /t/c/{token}", "GET /t/o/{token}",
                                          "POST /u/{token}"}
    assert token not in repr(seen) and token.split(".")[0] not in repr(seen)
    for channel in app.state.mesh.channels.values():
        await channel.close()
