"""The content calendar runs by itself: at a campaign's time its event reaches every lead of its
audience once (the trigger tables send the seasonal email), and nobody else; a bad calendar is refused."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from nurture.api.common.v1 import common_pb2
from services.journeys.domain.calendar import load_calendar
from services.journeys.domain.definitions import DefinitionError
from tests.integration.journeys.conftest import Mesh
from tests.integration.journeys.fakes import advance, lead, publish, settle, timeline_summaries

pytestmark = pytest.mark.anyio
SPRING = datetime(2027, 3, 1, 9, tzinfo=UTC)   # canada_express_entry_2027_spring in _calendar.yaml


def _seasonal(mesh: Mesh, lead_id: str) -> list[str]:
    return [r.dedupe_key for r in mesh.rec.sends if r.lead_id == lead_id and r.step == "seasonal_timing"]


async def test_a_seasonal_campaign_reaches_its_audience_once(mesh: Mesh) -> None:
    canada = lead("cal-ca", "skilled_professional", countries_of_interest=["CA"])
    other = lead("cal-de", "skilled_professional", countries_of_interest=["DE"])
    for snapshot in (canada, other):
        await publish(mesh.pub, mesh.clock, snapshot, "lead_created")
    await settle(mesh.admin)
    await advance(mesh.admin, mesh.clock, (SPRING - mesh.clock.now()).total_seconds() - 3600)
    assert _seasonal(mesh, "cal-ca") == []
    await advance(mesh.admin, mesh.clock, 2 * 3600)
    assert len(_seasonal(mesh, "cal-ca")) == 1 and _seasonal(mesh, "cal-de") == []
    tl = await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="cal-ca"), timeout=5)
    assert any("seasonal_window" in s and "seasonal_timing" in s for s in timeline_summaries(tl)), \
        timeline_summaries(tl)[-5:]
    # Settling again, or later, does not run it again.
    await advance(mesh.admin, mesh.clock, 86400)
    assert len(_seasonal(mesh, "cal-ca")) == 1


@pytest.mark.parametrize(("text", "problem"), [
    ("campaigns:\n  - {id: Bad Id, at: '2027-01-01T00:00:00Z', event: x, audience: {fact: lead.id, exists: true}}\n",
     "id: must be"),
    ("campaigns:\n  - {id: a, at: 'soon', event: x, audience: {fact: lead.id, exists: true}}\n", "at: must be"),
    ("campaigns:\n  - {id: a, at: '2027-01-01T00:00:00Z', event: x, audience: {fact: lead.id, between: 1}}\n",
     "audience"),
    ("campaigns:\n  - {id: a, at: '2027-01-01T00:00:00Z', event: x, audience: {fact: lead.id, exists: true}}\n"
     "  - {id: a, at: '2027-01-02T00:00:00Z', event: x, audience: {fact: lead.id, exists: true}}\n", "duplicate"),
])
def test_a_bad_calendar_is_refused_with_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "_calendar.yaml"
    path.write_text(text)
    with pytest.raises(DefinitionError, match=problem):
        load_calendar(path)
