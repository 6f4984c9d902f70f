"""A lead's first lifecycle change is timed from its creation (docs/API.md, Analytics, "Lifecycle: each
`stage_changed` with the time since the lead's previous change (or its creation)"), through the real
scoring, whose bus snapshot is where analytics learns when the lead was made. The snapshot of an event's
messages carried no creation time, so every first change read 0 hours."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from gateway.app import create_app
from nurture.clock import VirtualClock
from nurture.redisconn import connect_sync
from nurture.settings import SERVICES, Settings
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.analytics.test_service import settle

pytestmark = pytest.mark.anyio


async def test_a_leads_first_stage_change_is_timed_from_its_creation(settings: Settings) -> None:
    cfg = settings.with_overrides(**{f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES})
    running = []
    try:
        for name in ("scoring", "analytics"):
            service = await start_service(name, cfg)
            running.append(service)
            cfg = cfg.with_overrides(**{f"{name}_addr": service.address})
        app = create_app(cfg.with_overrides(api_key="test-key"))
        for s in SERVICES:
            app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))
        clock = VirtualClock(connect_sync(cfg))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw",
                                     headers={"Authorization": "Bearer test-key"}) as http:
            created = clock.now()
            r = await http.post("/v1/leads", json={"id": "dwell-1", "email": "dwell-1@example.com"})
            assert r.status_code == 201, r.text
            assert r.json()["lifecycle_stage"] == "subscriber"
            clock.advance(2 * 3600)
            # A form makes the subscriber a lead (model.yaml lifecycle.events), two hours after creation.
            r = await http.post("/v1/events", json={"lead_id": "dwell-1", "type": "form_submitted"})
            assert r.status_code == 202, r.text
            for service in running:
                await settle(service)
            r = await http.get("/v1/analytics/progression", params={
                "from": (created - timedelta(days=1)).isoformat(), "to": (created + timedelta(days=1)).isoformat()})
            assert r.status_code == 200, r.text
            rows = [row for row in r.json()["lifecycle"] if (row["from"], row["to"]) == ("subscriber", "lead")]
            assert [(row["count"], row["median_hours"], row["p90_hours"]) for row in rows] == [(1, 2.0, 2.0)], rows
    finally:
        for service in running:
            await service.stop(grace=0.2)
