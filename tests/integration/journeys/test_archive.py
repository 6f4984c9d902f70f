"""Through the gateway over the real scoring, messaging and journeys: a journey can be archived (and brought
back). Found by a marketing-ops user: `DELETE /v1/journeys/{key}` was a 405 and the only way to stop a journey
was publishing another version of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from nurture.settings import Settings
from tests.conftest import free_port
from tests.integration.templates.mesh import TemplatesMesh, templates_mesh

pytestmark = pytest.mark.anyio
JOURNEY = "skilled_professional"   # where mesh.add_lead's nurse goes


def _mesh(settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Every service, so the clock's advance settles them all; crm_sync's CRM is a closed port."""
    closed_crm = settings.with_overrides(crm_url=f"http://127.0.0.1:{free_port()}")
    return templates_mesh(closed_crm, tmp_path, extra=("crm_sync", "analytics"))


async def _settle(mesh: TemplatesMesh, seconds: float = 60) -> None:
    r = await mesh.client.post("/v1/admin/clock/advance", headers=mesh.headers("admin"), json={"seconds": seconds})
    assert r.status_code == 200, r.text


async def _members(mesh: TemplatesMesh, status: str = "") -> list[str]:
    r = await mesh.client.get(f"/v1/journeys/{JOURNEY}/members?status={status}", headers=mesh.headers("viewer"))
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def _listed(mesh: TemplatesMesh) -> dict[str, object]:
    r = await mesh.client.get("/v1/journeys", headers=mesh.headers("viewer"))
    assert r.status_code == 200, r.text
    return {j["key"]: j for j in r.json()["items"]}[JOURNEY]


async def test_an_archived_journey_enters_no_one_and_its_leads_exit(settings: Settings, tmp_path: Path) -> None:
    async with _mesh(settings, tmp_path) as mesh:
        await mesh.add_lead("inside")
        await _settle(mesh)
        assert await _members(mesh) == ["inside"]

        r = await mesh.client.post(f"/v1/journeys/{JOURNEY}/archive", headers=mesh.headers("viewer"))
        assert r.status_code == 403, r.text
        r = await mesh.client.post(f"/v1/journeys/{JOURNEY}/archive", headers=mesh.headers("editor"))
        assert r.status_code == 200, r.text
        assert r.json() == {"key": JOURNEY, "status": "archived", "version": 1, "changed": True}
        # Idempotent: a second archive changes nothing and says so.
        r = await mesh.client.post(f"/v1/journeys/{JOURNEY}/archive", headers=mesh.headers("editor"))
        assert r.status_code == 200 and r.json()["changed"] is False, r.text

        listed = await _listed(mesh)
        assert (listed["status"], listed["published_version"]) == ("archived", None), listed
        r = await mesh.client.get(f"/v1/journeys/{JOURNEY}", headers=mesh.headers("viewer"))
        assert r.json()["status"] == "archived" and r.json()["versions"][0]["status"] == "archived", r.text
        # The lead inside exited with the reason; history and analytics stay readable.
        assert await _members(mesh) == []
        assert await _members(mesh, "exited") == ["inside"]
        r = await mesh.client.get(f"/v1/journeys/{JOURNEY}/analytics", headers=mesh.headers("viewer"))
        assert r.status_code == 200 and r.json()["exit_reasons"] == {"journey archived": 1}, r.text
        assert r.json()["enrolled"] == 1, r.text
        archived_steps = [s["step"] for s in r.json()["steps"]]
        assert archived_steps, r.text
        # A draft stored after the archive (an edit, or the playbook file changed) is not what the archived
        # journey ran: its analytics still read the archived version's steps.
        r = await mesh.client.put(f"/v1/journeys/{JOURNEY}", headers=mesh.headers("editor"), json={
            "key": JOURNEY, "name": "Rewritten", "kind": "segment",
            "entry": [{"name": "never", "events": ["lead_created"], "when": {"fact": "lead.segment", "eq": "x"}}],
            "steps": [{"id": "only_step", "type": "end"}]})
        assert r.status_code == 201, r.text
        r = await mesh.client.get(f"/v1/journeys/{JOURNEY}/analytics", headers=mesh.headers("viewer"))
        assert [s["step"] for s in r.json()["steps"]] == archived_steps, r.text

        # A new lead of the segment is not entered, even after time passes.
        await mesh.add_lead("after_archive")
        await _settle(mesh, 3600)
        assert await _members(mesh) == []
        r = await mesh.client.get(f"/v1/journeys/{JOURNEY}/members?status=", headers=mesh.headers("viewer"))
        assert "after_archive" not in r.json()["items"]

        # Brought back: it enters again (the archived lead does not come back by itself).
        r = await mesh.client.post(f"/v1/journeys/{JOURNEY}/unarchive", headers=mesh.headers("editor"))
        assert r.status_code == 200, r.text
        assert r.json() == {"key": JOURNEY, "status": "published", "version": 1, "changed": True}
        assert (await _listed(mesh))["status"] == "published"
        await mesh.add_lead("after_unarchive")
        await _settle(mesh)
        assert await _members(mesh) == ["after_unarchive"]


async def test_publishing_brings_an_archived_journey_back_and_bad_keys_are_refused(settings: Settings,
                                                                                  tmp_path: Path) -> None:
    async with _mesh(settings, tmp_path) as mesh:
        editor = mesh.headers("editor")
        r = await mesh.client.post("/v1/journeys/no_such_journey/archive", headers=editor)
        assert r.status_code == 404, r.text
        r = await mesh.client.post(f"/v1/journeys/{JOURNEY}/unarchive", headers=editor)
        assert r.status_code == 200 and r.json()["changed"] is False, r.text   # it is live: nothing to do
        r = await mesh.client.post(f"/v1/journeys/{JOURNEY}/archive", headers=editor)
        assert r.status_code == 200, r.text
        r = await mesh.client.post(f"/v1/journeys/{JOURNEY}/publish", headers=editor, json={"version": 1})
        assert r.status_code == 200, r.text
        listed = await _listed(mesh)
        assert (listed["status"], listed["published_version"]) == ("published", 1), listed
        await mesh.add_lead("back")
        await _settle(mesh)
        assert await _members(mesh) == ["back"]
        # A journey never published has nothing to archive: a 409 saying so.
        r = await mesh.client.put("/v1/journeys/draft_only", headers=editor, json={
            "key": "draft_only", "name": "Draft only", "kind": "segment",
            "entry": [{"name": "never", "events": ["lead_created"], "when": {"fact": "lead.segment", "eq": "x"}}],
            "steps": [{"id": "done", "type": "end"}]})
        assert r.status_code == 201, r.text
        r = await mesh.client.post("/v1/journeys/draft_only/archive", headers=editor)
        assert r.status_code == 409 and r.json()["error"]["code"] == "journey_not_published", r.text
