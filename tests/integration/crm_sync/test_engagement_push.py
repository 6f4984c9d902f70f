"""The seed's bi-directional sync sends the CRM a lead's engagement history (sync.yaml maps the lead's
`last_engaged_at` to `nurture_last_engaged_at`, always the platform's). crm_sync pushes what the bus
snapshot of the lead's latest message carries, and scoring's snapshot of an event's messages carried no
timestamps: after the open that engaged the lead, the CRM was told it never engaged (an empty value)."""

from __future__ import annotations

import json

import pytest

from nurture.api.scoring.v1 import scoring_pb2
from tests.integration.crm_sync.conftest import Mesh
from tests.integration.crm_sync.test_crm_sync import contact, remote_contact, upsert

pytestmark = pytest.mark.anyio


async def test_an_engagement_reaches_the_crm_as_the_leads_last_engagement(mesh: Mesh) -> None:
    crm_id = remote_contact(mesh, "eng@example.com")
    [r] = await upsert(mesh, contact(crm_id, "eng@example.com", mesh.clock.now(), first_name="Eng"))
    await mesh.settle()
    mesh.clock.advance(3600)
    await mesh.scoring.IngestEvents(scoring_pb2.IngestRequest(events=[scoring_pb2.Event(
        lead_id=r.lead_id, type="email_opened", idempotency_key="eng-open",
        properties_json=json.dumps({}))]), timeout=5)
    await mesh.advance(60)
    lead = await mesh.scoring.GetLead(scoring_pb2.GetLeadRequest(id=r.lead_id), timeout=5)
    assert lead.HasField("last_engaged_at")
    remote = mesh.emulator.get(f"/crm/v3/objects/contacts/{crm_id}")["properties"]
    assert remote["nurture_engagement_summary"] != "none", remote   # the open's push reached the CRM
    pushed = remote.get("nurture_last_engaged_at") or ""
    assert pushed.startswith(lead.last_engaged_at.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S")), remote
