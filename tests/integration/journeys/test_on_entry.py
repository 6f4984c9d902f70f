"""Through the journeys service (real gRPC, Redis timers, SQL state; messaging and crm_sync as small real
servers, no CRM emulator to write an id back): an `on_entry` trigger holds on the event that enrolled the
lead, after the entry's welcome, with the event kept in SQL between the bus batch and the timer batch."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import grpc
import pytest

from nurture.api.common.v1 import common_pb2
from nurture.settings import Settings
from tests.conftest import free_port
from tests.integration.journeys.conftest import Mesh
from tests.integration.journeys.fakes import advance, lead, publish, settle, timeline_summaries
from tests.integration.templates.mesh import TemplatesMesh, templates_mesh

pytestmark = pytest.mark.anyio

DAY = 86400


def _steps(mesh: Mesh, journey: str) -> list[str]:
    return [r.step for r in mesh.rec.sends if r.journey == journey]


async def test_consent_given_later_jumps_to_decision_once_after_the_welcome(mesh: Mesh) -> None:
    # The new-user report's steps: POST a nurse with an urgent timeline and no consent, PATCH consent,
    # advance one day. Before: email_01 and email_02, never the decision stage.
    late = {**lead("late1", "skilled_professional", profession="nurse", timeline="urgent"), "consent": {}}
    await publish(mesh.pub, mesh.clock, late, "lead_created")
    await settle(mesh.admin)
    assert _steps(mesh, "skilled_professional") == []
    await publish(mesh.pub, mesh.clock, {**late, "consent": {"email": True}}, "lead_updated", changed=["consent"])
    await settle(mesh.admin)
    await advance(mesh.admin, mesh.clock, DAY)
    assert _steps(mesh, "skilled_professional") == ["email_01", "email_15"]
    tl = timeline_summaries(await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="late1"), timeout=5))
    jumps = [s for s in tl if "matched rule urgent_timeline " in s]
    assert len(jumps) == 1 and "jumped to decision stage: lead_updated attributes.timeline=urgent" in jumps[0], tl
    assert "(on entry, once the entry's first steps had run)" in jumps[0]
    await advance(mesh.admin, mesh.clock, DAY)   # the budget held the profile row's email a day
    assert _steps(mesh, "triggers") == ["timeline_urgency"]


async def test_consent_withdrawn_and_given_back_resumes_and_jumps_once_on_an_urgent_timeline(mesh: Mesh) -> None:
    # Welcomed, consent withdrawn, the timeline made urgent while it was off, consent given back: the
    # resumed enrolment went on to email_02 and never reached the decision stage.
    kim = {**lead("res-1", "skilled_professional", profession="nurse"), "consent": {"email": True}}
    await publish(mesh.pub, mesh.clock, kim, "lead_created")
    await settle(mesh.admin)
    await advance(mesh.admin, mesh.clock, 3600)
    off = {**kim, "consent": {"email": False}}
    await publish(mesh.pub, mesh.clock, off, "lead_updated", changed=["consent"])
    urgent = {**off, "attributes": {**off["attributes"], "timeline": "urgent"}}
    await publish(mesh.pub, mesh.clock, urgent, "lead_updated", changed=["attributes.timeline"])
    await settle(mesh.admin)
    await publish(mesh.pub, mesh.clock, {**urgent, "consent": {"email": True}}, "lead_updated", changed=["consent"])
    await settle(mesh.admin)
    await advance(mesh.admin, mesh.clock, 60)
    assert _steps(mesh, "skilled_professional") == ["email_01", "email_15"]
    tl = timeline_summaries(await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="res-1"), timeout=5))
    assert any("re-entered after email consent was given again" in s for s in tl), tl
    jumps = [s for s in tl if "matched rule urgent_timeline " in s]
    assert len(jumps) == 1 and "(on entry, once the entry's first steps had run)" in jumps[0], tl
    await advance(mesh.admin, mesh.clock, 6 * DAY)
    delivered = Counter(_steps(mesh, "skilled_professional"))
    assert delivered["email_15"] == 1 and delivered["email_02"] == 0, delivered


async def test_created_urgent_gets_the_welcome_then_one_jump_and_the_crm_update_adds_nothing(mesh: Mesh) -> None:
    ana = lead("urg-1", "skilled_professional", timeline="urgent")
    # The welcome fails first (messaging down): the jump waits for it, then follows it.
    mesh.rec.answers["skilled_professional.email_01"] = grpc.StatusCode.UNAVAILABLE
    await publish(mesh.pub, mesh.clock, ana, "lead_created")
    await settle(mesh.admin)
    assert "email_15" not in _steps(mesh, "skilled_professional")
    del mesh.rec.answers["skilled_professional.email_01"]
    await advance(mesh.admin, mesh.clock, 120)
    tl = timeline_summaries(await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="urg-1"), timeout=5))
    retried = next(i for i, s in enumerate(tl) if "email_01 will be retried" in s)
    jumped = [i for i, s in enumerate(tl) if "matched rule urgent_timeline " in s]
    assert len(jumped) == 1 and jumped[0] > retried, tl
    assert _steps(mesh, "skilled_professional")[-1] == "email_01"
    # email_01 and the triggers' expedited pathways email filled the day's frequency budget: email_15
    # goes the next day (the timeline says so).
    assert any("email_15 held by the frequency budget" in s for s in tl), tl
    await advance(mesh.admin, mesh.clock, DAY)
    assert _steps(mesh, "skilled_professional")[-2:] == ["email_01", "email_15"]
    await publish(mesh.pub, mesh.clock, {**ana, "crm_id": "crm-9"}, "lead_updated", changed=["crm_id"], source="crm")
    await settle(mesh.admin)
    await advance(mesh.admin, mesh.clock, 6 * DAY)
    delivered = Counter(_steps(mesh, "skilled_professional"))
    assert delivered["email_15"] == 1 and delivered["email_16"] == 1 and delivered["email_02"] == 0, delivered
    assert _steps(mesh, "triggers") == ["timeline_urgency"]
    once = [r.dedupe_key for r in mesh.rec.sends if r.step != "email_01"]   # (email_01 was retried)
    assert len(once) == len(set(once)), once


async def test_a_first_download_is_delivered_once(mesh: Mesh) -> None:
    bo = lead("lm-1", "family")
    await publish(mesh.pub, mesh.clock, bo, "lead_created")
    await publish(mesh.pub, mesh.clock, bo, "resource_downloaded", resource="g-1", resource_title="Guide")
    await settle(mesh.admin)
    await advance(mesh.admin, mesh.clock, DAY + 60)
    assert _steps(mesh, "lead_magnet") == ["email_01", "email_02"]


async def test_the_reported_steps_through_the_gateway_jump_once(settings: Settings, tmp_path: Path) -> None:
    # The report's steps as a new user took them, through the gateway over the real services, the CRM
    # emulator absent (crm_sync's CRM is a closed port: no CRM id is written back, no lead_updated comes
    # later): POST without consent, PATCH consent, advance a day.
    closed_crm = settings.with_overrides(crm_url=f"http://127.0.0.1:{free_port()}")
    async with templates_mesh(closed_crm, tmp_path, extra=("crm_sync", "analytics")) as mesh:
        r = await mesh.client.post("/v1/leads", headers=mesh.headers("editor"), json={
            "id": "late1", "email": "late1@example.com", "timezone": "UTC",
            "attributes": {"profession": "nurse", "timeline": "urgent"}})
        assert r.status_code in (200, 201), r.text
        await _api_advance(mesh, 0)
        r = await mesh.client.patch("/v1/leads/late1", headers=mesh.headers("editor"),
                                    json={"consent": {"email": True}})
        assert r.status_code == 200, r.text
        await _api_advance(mesh, DAY)
        r = await mesh.client.get("/v1/leads/late1/messages", headers=mesh.headers("viewer"))
        assert r.status_code == 200, r.text
        templates = [m["template"] for m in r.json()["items"] if m["template"].startswith("skilled_professional.")]
        assert sorted(templates) == ["skilled_professional.email_01", "skilled_professional.email_15"], templates
        r = await mesh.client.get("/v1/leads/late1/timeline", headers=mesh.headers("viewer"))
        assert r.status_code == 200, r.text
        jumps = [str(t) for t in r.json()["items"] if "matched rule urgent_timeline " in str(t)]
        assert len(jumps) == 1 and "on entry" in jumps[0], r.json()


async def _api_advance(mesh: TemplatesMesh, seconds: float) -> None:
    r = await mesh.client.post("/v1/admin/clock/advance", headers=mesh.headers("admin"), json={"seconds": seconds})
    assert r.status_code == 200, r.text
