"""Through the gateway over the real scoring, journeys, messaging and analytics, under the virtual clock: a
won deal's path and time to conversion leave out the customer journey the win itself started. The win
makes the lead a customer, which enters the customer journey and sends its welcome at the win's instant;
"entries at or before the win" took it, so time to conversion for `customer` was 0 h and the path ended
`>customer`. Left out by cause (the entry's `entered_by` is the win's event or the stage change it made),
not by time."""

from __future__ import annotations

from pathlib import Path

import pytest

from nurture.settings import Settings
from tests.conftest import free_port
from tests.integration.templates.mesh import TemplatesMesh, templates_mesh

pytestmark = pytest.mark.anyio

DAY = 86400


async def _advance(mesh: TemplatesMesh, seconds: float) -> None:
    r = await mesh.client.post("/v1/admin/clock/advance", headers=mesh.headers("admin"), json={"seconds": seconds})
    assert r.status_code == 200, r.text


async def test_a_wins_path_leaves_out_the_customer_journey_the_win_started(settings: Settings,
                                                                          tmp_path: Path) -> None:
    closed_crm = settings.with_overrides(crm_url=f"http://127.0.0.1:{free_port()}")
    async with templates_mesh(closed_crm, tmp_path, extra=("crm_sync", "analytics")) as mesh:
        await mesh.add_lead("ana", segment="family")
        await _advance(mesh, 2 * DAY + 3 * 3600)  # the family emails' minimum gap is over: no wait
        r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"), json={
            "lead_id": "ana", "type": "opportunity_won", "properties": {"amount": 1000, "deal_id": "d-ana"}})
        assert r.status_code == 202, r.text
        await _advance(mesh, 0)
        r = await mesh.client.get("/v1/leads/ana/messages", headers=mesh.headers("viewer"))
        # The customer journey's welcome went at the win's instant.
        at = {m["template"]: m["at"] for m in r.json()["items"] if m["status"] == "sent"}
        assert at.get("customer.email_01") == "2026-01-07T12:00:00Z" and "family.email_01" in at, at

        q = {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
        progression = (await mesh.client.get("/v1/analytics/progression", params=q,
                                              headers=mesh.headers("viewer"))).json()
        ttc = {row["journey"]: row for row in progression["time_to_conversion"]}
        assert "customer" not in ttc, ttc
        assert ttc[None]["conversions"] == 1 and ttc[None]["median_hours"] == 51, ttc
        roi = (await mesh.client.get("/v1/analytics/roi", params=q, headers=mesh.headers("viewer"))).json()
        assert [p["path"] for p in roi["by_path"]] == ["family"], roi["by_path"]
