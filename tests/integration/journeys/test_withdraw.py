"""Through the gateway over the real scoring, messaging and journeys: a lead who leaves a journey by a rule
overnight is not sent, in the morning, that journey's email that was waiting for the lead's daytime.
Found by a new user: a skilled professional moved to the entrepreneur segment at night got the skilled
welcome and then the entrepreneur one; a family lead who bought at night got the family welcome after
the purchase."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from nurture.settings import Settings
from tests.conftest import free_port
from tests.integration.journeys.conftest import Mesh
from tests.integration.journeys.fakes import lead, publish, settle
from tests.integration.templates.mesh import TemplatesMesh, templates_mesh

pytestmark = pytest.mark.anyio

HOUR = 3600


async def _advance(mesh: TemplatesMesh, seconds: float) -> None:
    r = await mesh.client.post("/v1/admin/clock/advance", headers=mesh.headers("admin"), json={"seconds": seconds})
    assert r.status_code == 200, r.text


async def _night_zone(mesh: TemplatesMesh) -> str:
    """A fixed-offset zone where it is 01:00 now (outside the 08:00-20:00 window: mail waits for 08:00)."""
    r = await mesh.client.get("/v1/admin/clock", headers=mesh.headers("admin"))
    assert r.status_code == 200, r.text
    now = datetime.fromisoformat(r.json()["now"].replace("Z", "+00:00"))
    offset = (1 - now.hour) % 24
    offset = offset - 24 if offset > 12 else offset   # Etc/GMT-N is UTC+N
    return "UTC" if offset == 0 else (f"Etc/GMT-{offset}" if offset > 0 else f"Etc/GMT+{-offset}")


async def _messages(mesh: TemplatesMesh, lead_id: str) -> dict[str, dict[str, Any]]:
    r = await mesh.client.get(f"/v1/leads/{lead_id}/messages", headers=mesh.headers("viewer"))
    assert r.status_code == 200, r.text
    return {m["template"]: m for m in r.json()["items"]}


async def test_an_exit_overnight_withdraws_the_email_waiting_for_the_morning(settings: Settings,
                                                                             tmp_path: Path) -> None:
    # Advance settles every service; crm_sync's CRM is a closed port (no CRM emulator here).
    closed_crm = settings.with_overrides(crm_url=f"http://127.0.0.1:{free_port()}")
    async with templates_mesh(closed_crm, tmp_path, extra=("crm_sync", "analytics")) as mesh:
        zone = await _night_zone(mesh)
        for lead_id, segment in (("moved", "skilled_professional"), ("bought", "family"), ("stays", "family")):
            r = await mesh.client.post("/v1/leads", headers=mesh.headers("editor"), json={
                "id": lead_id, "email": f"{lead_id}@example.com", "consent": {"email": True}, "timezone": zone,
                "segment": segment})
            assert r.status_code == 201, r.text
        await _advance(mesh, HOUR)
        waiting = await _messages(mesh, "moved")
        assert waiting["skilled_professional.email_01"]["status"] == "scheduled", waiting

        r = await mesh.client.patch("/v1/leads/moved", headers=mesh.headers("editor"),
                                    json={"segment": "entrepreneur"})
        assert r.status_code == 200, r.text
        r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"),
                                   json={"lead_id": "bought", "type": "subscribed", "properties": {"plan": "family"}})
        assert r.status_code == 202, r.text
        await _advance(mesh, 9 * HOUR)   # past 08:00 local

        moved = await _messages(mesh, "moved")
        assert moved["skilled_professional.email_01"]["status"] == "suppressed", moved
        assert "left the journey (segment_changed)" in moved["skilled_professional.email_01"]["reason"]
        assert moved["entrepreneur.email_01"]["status"] == "sent", moved
        bought = await _messages(mesh, "bought")
        assert bought["family.email_01"]["status"] == "suppressed", bought
        assert "left the journey (converted)" in bought["family.email_01"]["reason"]
        # A lead still in its journey gets the email it waited for.
        assert (await _messages(mesh, "stays"))["family.email_01"]["status"] == "sent"
        mailed = sorted((str(m["To"]), str(m["Subject"])) for m in mesh.mails())
        welcome = "Welcome to your family's immigration journey"
        assert ("stays@example.com", welcome) in mailed and ("bought@example.com", welcome) not in mailed, mailed
        assert [to for to, _ in mailed].count("moved@example.com") == 1, mailed   # the entrepreneur welcome only

        r = await mesh.client.get("/v1/leads/moved/timeline", headers=mesh.headers("viewer"))
        said = [t["summary"] for t in r.json()["items"] if t["kind"] == "message"]
        assert any("skilled_professional.email_01 not sent: withdrawn: the lead left the journey" in s
                   for s in said), said


async def test_a_withdrawal_messaging_could_not_take_is_asked_again_at_the_next_settle(mesh: Mesh) -> None:
    # The journeys service over a messaging that answers Withdraw UNAVAILABLE, then is back: the exit is
    # committed at once and its withdrawal reaches messaging on the next pass, once.
    ana = lead("wd-1", "family")
    await publish(mesh.pub, mesh.clock, ana, "lead_created")
    await settle(mesh.admin)
    mesh.rec.withdraw_answer = grpc.StatusCode.UNAVAILABLE
    await publish(mesh.pub, mesh.clock, {**ana, "segment": "entrepreneur"}, "lead_updated", changed=["segment"])
    await settle(mesh.admin)
    assert mesh.rec.withdrawals == []
    mesh.rec.withdraw_answer = None
    await settle(mesh.admin)
    await settle(mesh.admin)
    asked = [(w.lead_id, w.journey, w.journey_version, w.occurrence_prefix, w.reason) for w in mesh.rec.withdrawals]
    assert asked == [("wd-1", "family", 1, "1.", "segment_changed")], asked
