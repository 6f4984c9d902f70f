"""The lead's consent as the API shows it matches what the engine enforces (the new-user run's find: after
an unsubscribe from nurture mail `consent.email` still read true while no nurture email went), through the
gateway over real scoring and messaging services: the unsubscribe link, then the lead read alone and in a
page of leads."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import create_app
from nurture.settings import SERVICES, Settings
from services.messaging.domain.tokens import Signer, Token
from tests.conftest import free_port, mesh_channel, start_service

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": "Bearer test-key"}


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    cfg = settings.with_overrides(**addrs)
    scoring = await start_service("scoring", cfg)
    messaging = await start_service("messaging", cfg.with_overrides(scoring_addr=scoring.address))
    app = create_app(cfg.with_overrides(api_key="test-key", scoring_addr=scoring.address,
                                        messaging_addr=messaging.address))
    for s in SERVICES:
        app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        yield client
    await messaging.stop(grace=0.2)
    await scoring.stop(grace=0.2)


async def _lead(client: httpx.AsyncClient, lead_id: str) -> dict:
    r = await client.post("/v1/leads", headers=AUTH, json={"id": lead_id, "email": f"{lead_id}@example.com",
                                                          "consent": {"email": True, "sms": True}})
    assert r.status_code == 201 and r.json()["consent"] == {"email": True, "sms": True}
    return dict(r.json())


async def _unsubscribe(client: httpx.AsyncClient, settings: Settings, lead_id: str, scope: str) -> None:
    token = Signer(settings.secret).sign(Token("unsubscribe", f"m-{lead_id}", lead_id))
    r = await client.post(f"/u/{token}", data={"scope": scope})
    assert r.status_code == 200, r.text


async def test_consent_reads_as_the_engine_applies_it_after_an_unsubscribe(
        gateway: httpx.AsyncClient, settings: Settings) -> None:
    for lead_id in ("nurture-only", "all-mail", "reminders-only", "still-in"):
        await _lead(gateway, lead_id)
    await _unsubscribe(gateway, settings, "nurture-only", "nurture")
    await _unsubscribe(gateway, settings, "all-mail", "all")
    await _unsubscribe(gateway, settings, "reminders-only", "transactional")

    async def shown(lead_id: str) -> dict:
        r = await gateway.get(f"/v1/leads/{lead_id}", headers=AUTH)
        assert r.status_code == 200
        return dict(r.json())

    # Out of nurture mail: consent.email false, as subscriptions say; the rest of the consent stays.
    lead = await shown("nurture-only")
    assert lead["consent"] == {"email": False, "sms": True}
    assert lead["subscriptions"]["email"] == {"nurture": False, "transactional": True}
    # Out of all mail: false too.
    lead = await shown("all-mail")
    assert lead["consent"]["email"] is False
    assert lead["subscriptions"]["email"] == {"nurture": False, "transactional": False}
    # Out of reminders only: nurture email still goes, so the consent to email stands.
    lead = await shown("reminders-only")
    assert lead["consent"]["email"] is True
    assert lead["subscriptions"]["email"] == {"nurture": True, "transactional": False}
    assert (await shown("still-in"))["consent"]["email"] is True

    # A page of leads shows the same consent as each lead read alone.
    r = await gateway.get("/v1/leads", headers=AUTH, params={"limit": 10})
    assert r.status_code == 200
    listed = {item["id"]: item["consent"]["email"] for item in r.json()["items"]}
    assert listed == {"nurture-only": False, "all-mail": False, "reminders-only": True, "still-in": True}
