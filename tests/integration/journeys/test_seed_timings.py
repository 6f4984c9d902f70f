"""The seed's timings through the real scoring, journeys and messaging services behind the gateway, with
virtual time moved by the API (`POST /v1/admin/clock/advance`) as a new user would move it."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nurture.settings import Settings
from tests.integration.templates.mesh import TemplatesMesh, templates_mesh

pytestmark = pytest.mark.anyio


async def _advance(mesh: TemplatesMesh, seconds: float) -> datetime:
    r = await mesh.client.post("/v1/admin/clock/advance", headers=mesh.headers("admin"), json={"seconds": seconds})
    assert r.status_code == 200, r.text
    return datetime.fromisoformat(r.json()["now"])


async def _messages(mesh: TemplatesMesh, lead_id: str) -> dict[str, dict[str, Any]]:
    r = await mesh.client.get(f"/v1/leads/{lead_id}/messages", headers=mesh.headers("viewer"))
    assert r.status_code == 200, r.text
    return {m["template"]: m for m in r.json()["items"]}


async def test_the_cart_reminder_goes_an_hour_after_checkout_even_right_after_another_email(
        settings: Settings, tmp_path: Path) -> None:
    # Seed, Cart Abandonment Sequence: "+1 Hour: Reminder of subscription benefits". The lead got its
    # welcome email when it signed up; the reminder must not wait for messaging's 2 h gap after it.
    async with templates_mesh(settings, tmp_path, extra=("crm_sync", "analytics")) as mesh:
        await mesh.add_lead("cart")
        start = await _advance(mesh, 0)   # 09:00 UTC, the virtual clock's origin: the lead's daytime
        assert _sent(await _messages(mesh, "cart"), "skilled_professional.email_01")
        r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"), json={
            "lead_id": "cart", "type": "checkout_started", "properties": {"cart_id": "c-1", "plan": "pro"}})
        assert r.status_code == 202, r.text
        await _advance(mesh, 3600 - 1)
        assert "cart_abandonment.email_01" not in await _messages(mesh, "cart")
        await _advance(mesh, 1)
        reminder = (await _messages(mesh, "cart"))["cart_abandonment.email_01"]
        assert reminder["status"] == "sent", reminder
        assert datetime.fromisoformat(reminder["at"]) == start + timedelta(hours=1)
        assert any(m["Subject"] == "Your subscription is waiting" for m in mesh.mails())


def _sent(messages: dict[str, dict[str, Any]], template: str) -> bool:
    return template in messages and messages[template]["status"] == "sent"

