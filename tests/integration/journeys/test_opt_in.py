"""Through the gateway over the real scoring, messaging and journeys: a lead that opts in by the event
(`subscribed` with channel email, docs/API.md's explicit opt-in) enters its segment journey and is
welcomed, as one whose consent is PATCHed is."""

from __future__ import annotations

from pathlib import Path

import pytest

from nurture.settings import Settings
from tests.conftest import free_port
from tests.integration.journeys.test_withdraw import _advance, _messages
from tests.integration.templates.mesh import templates_mesh

pytestmark = pytest.mark.anyio


async def test_an_opt_in_by_the_subscribed_event_enters_the_segment_journey(settings: Settings,
                                                                             tmp_path: Path) -> None:
    # A new user's family lead, imported without consent, confirmed its sign-up (subscribed, email): its
    # consent read true, the triggers tables listened, and no family email ever came.
    closed_crm = settings.with_overrides(crm_url=f"http://127.0.0.1:{free_port()}")
    async with templates_mesh(closed_crm, tmp_path, extra=("crm_sync", "analytics")) as mesh:
        r = await mesh.client.post("/v1/leads", headers=mesh.headers("editor"), json={
            "id": "optin", "email": "optin@example.com", "consent": {"email": False}, "timezone": "UTC",
            "segment": "family"})
        assert r.status_code == 201, r.text
        await _advance(mesh, 3600)
        r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"), json={
            "lead_id": "optin", "type": "subscribed", "properties": {"channel": "email"}})
        assert r.status_code == 202, r.text
        await _advance(mesh, 86400)
        r = await mesh.client.get("/v1/leads/optin", headers=mesh.headers("viewer"))
        assert r.json()["consent"]["email"] is True
        assert {j["journey"]: j["status"] for j in r.json()["journeys"]}.get("family") == "active", r.json()
        sent = await _messages(mesh, "optin")
        assert sent["family.email_01"]["status"] == "sent", sent
        assert sent["family.email_02"]["status"] == "sent", sent
