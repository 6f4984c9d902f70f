"""Through the gateway over the real scoring, messaging and journeys: an instance journey (one enrolment
per webinar) runs each instance's steps, the messages of each their own."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from nurture.settings import Settings
from tests.conftest import free_port
from tests.integration.journeys.test_withdraw import _advance
from tests.integration.templates.mesh import templates_mesh

pytestmark = pytest.mark.anyio


async def test_a_lead_registered_for_two_webinars_is_told_about_both(settings: Settings, tmp_path: Path) -> None:
    # A new user's lead registered for two webinars got the first's confirmation only: the second's
    # dedupe keys were the first's (each webinar is entry 1 of its own enrolment), so messaging answered
    # duplicate for its confirmation and would have for its reminders.
    closed_crm = settings.with_overrides(crm_url=f"http://127.0.0.1:{free_port()}")
    async with templates_mesh(closed_crm, tmp_path, extra=("crm_sync", "analytics")) as mesh:
        r = await mesh.client.post("/v1/leads", headers=mesh.headers("editor"), json={
            "id": "two", "email": "two@example.com", "consent": {"email": True}, "timezone": "UTC"})
        assert r.status_code == 201, r.text
        r = await mesh.client.get("/v1/admin/clock", headers=mesh.headers("admin"))
        now = datetime.fromisoformat(r.json()["now"].replace("Z", "+00:00"))
        for webinar, days in (("wA", 3), ("wB", 5)):
            starts = (now + timedelta(days=days)).isoformat().replace("+00:00", "Z")
            r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"), json={
                "lead_id": "two", "type": "webinar_registered",
                "properties": {"webinar_id": webinar, "starts_at": starts, "webinar_title": f"Webinar {webinar}"}})
            assert r.status_code == 202, r.text
        await _advance(mesh, 6 * 86400)
        r = await mesh.client.get("/v1/leads/two/messages", headers=mesh.headers("viewer"))
        sent = [m for m in r.json()["items"] if m["journey"] == "webinar" and m["status"] == "sent"]
        by_step: dict[str, int] = {}
        for m in sent:
            by_step[m["step"]] = by_step.get(m["step"], 0) + 1
        # The confirmation and the day-before and two-hours-before reminders, once per webinar.
        assert by_step.get("email_01") == 2 and by_step.get("email_02") == 2 and by_step.get("email_03") == 2, sent
