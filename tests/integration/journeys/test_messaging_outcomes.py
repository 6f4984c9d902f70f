"""What the journeys service does with each answer messaging can give to a send: suppressed and failed
steps are recorded as such and the journey goes on (no retry, no budget used); a queued or deferred one
counts toward the frequency budget; an unavailable messaging is retried for that step only."""

from __future__ import annotations

import grpc
import pytest
import sqlalchemy as sa

from nurture.api.common.v1 import common_pb2
from tests.integration.journeys.conftest import Mesh
from tests.integration.journeys.fakes import advance, lead, publish, settle, timeline_summaries

pytestmark = pytest.mark.anyio
DAY = 86400


def step_runs(mesh: Mesh, lead_id: str) -> dict[str, str]:
    """step -> status of the lead's step runs, from the service's own record."""
    engine = sa.create_engine(mesh.settings.database_url_for("journeys"))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT journey, step, status FROM journeys_step_runs WHERE lead_id = :l "
                                        "ORDER BY at, id"), {"l": lead_id}).all()
    finally:
        engine.dispose()
    return {f"{j}.{s}": status for j, s, status in rows}


async def welcome_then_three_triggers(mesh: Mesh, lead_id: str) -> None:
    """Day 0: the segment welcome, then a document-research view (one trigger email) and a country view
    (the segment's and the trigger table's country emails): four nurture emails against a budget of 2 a
    day. (Not a pricing view: the playbook's pricing email is budget-exempt.)"""
    ana = lead(lead_id, "skilled_professional")
    await publish(mesh.pub, mesh.clock, ana, "lead_created")
    await settle(mesh.admin)
    await publish(mesh.pub, mesh.clock, ana, "page_viewed", category="documents")
    await publish(mesh.pub, mesh.clock, ana, "page_viewed", category="country")
    await settle(mesh.admin)


async def test_a_suppressed_send_is_recorded_uses_no_budget_and_the_journey_goes_on(mesh: Mesh) -> None:
    mesh.rec.answers["skilled_professional.email_01"] = ("suppressed", "address suppressed (spam_report, all)")
    await welcome_then_three_triggers(mesh, "sup-1")
    runs = step_runs(mesh, "sup-1")
    assert runs["skilled_professional.email_01"] == "suppressed"
    # The suppressed welcome took no budget: two emails still went today, the third is held.
    sent = [r.template for r in mesh.rec.sends]
    assert len(sent) == 3 and sent[0] == "skilled_professional.email_01", sent
    tl = await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="sup-1"), timeout=5)
    held = [s for s in timeline_summaries(tl) if "held by the frequency budget" in s]
    assert len(held) == 1, held
    await advance(mesh.admin, mesh.clock, DAY + 60)
    # The journey went on (email_02 on day 1) and never tried the suppressed step again.
    keys = mesh.rec.sent_keys()
    assert keys.count("sup-1:skilled_professional:1:email_01:1.1") == 1
    assert "sup-1:skilled_professional:1:email_02:1.1" in keys


async def test_a_queued_or_deferred_send_counts_toward_the_budget(mesh: Mesh) -> None:
    mesh.rec.answers["skilled_professional.email_01"] = ("scheduled", "deferred: outside daytime in America/Lima")
    await welcome_then_three_triggers(mesh, "def-1")
    assert step_runs(mesh, "def-1")["skilled_professional.email_01"] == "scheduled"
    sent = [r.template for r in mesh.rec.sends]
    assert len(sent) == 2 and sent[0] == "skilled_professional.email_01", sent
    tl = await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="def-1"), timeout=5)
    held = [s for s in timeline_summaries(tl) if "held by the frequency budget" in s]
    assert len(held) == 1 and "until 2026-01-06T09:00:00Z" in held[0], held


@pytest.mark.parametrize("answer", [("failed", "unknown template 'skilled_professional.email_01'"),
                                    ("invalid", "context_json is not JSON"),
                                    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED])
async def test_a_failed_send_is_recorded_not_retried_and_the_journey_goes_on(
        mesh: Mesh, answer: tuple[str, str] | grpc.StatusCode) -> None:
    mesh.rec.answers["skilled_professional.email_01"] = answer
    # Two leads in one pass: their welcomes go together (one SendBatch), as under load.
    for lead_id in ("fail-1", "fail-2"):
        await publish(mesh.pub, mesh.clock, lead(lead_id, "skilled_professional"), "lead_created")
    await settle(mesh.admin)
    if answer == ("invalid", "context_json is not JSON"):
        assert mesh.rec.batches >= 1
    for lead_id in ("fail-1", "fail-2"):
        assert step_runs(mesh, lead_id)["skilled_professional.email_01"] == "failed"
    await advance(mesh.admin, mesh.clock, 2 * DAY + 60)
    for lead_id in ("fail-1", "fail-2"):
        steps = [r.step for r in mesh.rec.sends if r.journey == "skilled_professional" and r.lead_id == lead_id]
        assert steps == ["email_01", "email_02", "email_03"]
        assert step_runs(mesh, lead_id)["skilled_professional.email_02"] == "sent"


async def test_an_unavailable_messaging_is_retried_for_that_step_only(mesh: Mesh) -> None:
    mesh.rec.answers["skilled_professional.email_01"] = grpc.StatusCode.UNAVAILABLE
    ana = lead("un-1", "skilled_professional")
    await publish(mesh.pub, mesh.clock, ana, "lead_created")
    await publish(mesh.pub, mesh.clock, ana, "page_viewed", category="pricing")
    await settle(mesh.admin)
    assert "skilled_professional.email_01" not in step_runs(mesh, "un-1")
    assert step_runs(mesh, "un-1")["triggers.pricing_page"] == "sent"   # other journeys are not held up
    refused = [r.step for r in mesh.rec.sends].count("email_01")
    assert refused >= 1
    del mesh.rec.answers["skilled_professional.email_01"]
    await advance(mesh.admin, mesh.clock, 10 * 60)
    assert step_runs(mesh, "un-1")["skilled_professional.email_01"] == "sent"
    assert [r.step for r in mesh.rec.sends].count("email_01") == refused + 1   # retried once it answers
    tl = await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="un-1"), timeout=5)
    assert any("email_01 will be retried" in s for s in timeline_summaries(tl))
