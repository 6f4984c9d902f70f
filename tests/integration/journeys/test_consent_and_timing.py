"""Through the journeys service (real gRPC, Redis timers, SQL state; messaging and crm_sync as small
real servers): consent withdrawn and given again, and timed steps whose time has passed."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from nurture.api.common.v1 import common_pb2
from nurture.api.journeys.v1 import journeys_pb2
from tests.integration.journeys.conftest import Mesh
from tests.integration.journeys.fakes import advance, lead, publish, settle, timeline_summaries

pytestmark = pytest.mark.anyio

DAY = 86400


async def statuses(mesh: Mesh, lead_id: str) -> dict[str, str]:
    reply = await mesh.stub.LeadJourneys(journeys_pb2.LeadJourneysRequest(lead_id=lead_id), timeout=5)
    return {e.journey: e.status for e in reply.enrollments}


async def test_consent_given_again_resumes_the_trigger_tables_and_the_segment_journey(mesh: Mesh) -> None:
    ana = lead("rc-1", "skilled_professional")
    await publish(mesh.pub, mesh.clock, ana, "lead_created")
    await publish(mesh.pub, mesh.clock, ana, "page_viewed", category="country")
    await settle(mesh.admin)
    await advance(mesh.admin, mesh.clock, DAY + 60)  # email_02 on day 2 (+1d)

    withdrawn = {**ana, "consent": {"email": False}}
    await publish(mesh.pub, mesh.clock, withdrawn, "lead_updated")
    await settle(mesh.admin)
    assert await statuses(mesh, "rc-1") == {"skilled_professional": "exited", "triggers": "exited"}
    before = len(mesh.rec.sends)
    await advance(mesh.admin, mesh.clock, 2 * DAY)  # email_03 (+2d) falls in the withdrawn days
    await publish(mesh.pub, mesh.clock, withdrawn, "page_viewed", category="pricing")
    await settle(mesh.admin)
    assert mesh.rec.sends[before:] == []

    await publish(mesh.pub, mesh.clock, ana, "lead_updated")  # consent given again
    await settle(mesh.admin)
    assert await statuses(mesh, "rc-1") == {"skilled_professional": "active", "triggers": "active"}
    await publish(mesh.pub, mesh.clock, ana, "page_viewed", category="pricing")
    await publish(mesh.pub, mesh.clock, ana, "page_viewed", category="country")  # inside its 7d cooldown
    await settle(mesh.admin)

    steps = [(r.journey, r.step) for r in mesh.rec.sends]
    # Behavioural triggers again after re-consent; the cooldown of the one fired before is kept.
    assert ("triggers", "pricing_page") in steps
    assert Counter(steps)[("triggers", "country_content")] == 1
    # The segment journey goes on from where it stood: nothing done before is sent again.
    emails = [s for j, s in steps if j == "skilled_professional" and s.startswith("email_")]
    assert emails == ["email_01", "email_02", "email_03"]
    assert len(set(mesh.rec.sent_keys())) == len(mesh.rec.sent_keys())
    tl = timeline_summaries(await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="rc-1"), timeout=5))
    resumed = [s for s in tl if "re-entered after email consent was given again" in s]
    assert len(resumed) == 2 and any(s.startswith("triggers:") and "matched rule every_lead" in s for s in resumed)


async def test_a_registration_after_the_webinar_started_skips_the_reminders_whose_time_passed(mesh: Mesh) -> None:
    bo = lead("wb-1", "family")
    await publish(mesh.pub, mesh.clock, bo, "lead_created")
    await settle(mesh.admin)
    started = mesh.clock.now() - timedelta(hours=3)
    await publish(mesh.pub, mesh.clock, bo, "webinar_registered", webinar_id="w-late", starts_at=started.isoformat())
    await settle(mesh.admin)
    webinar = [r for r in mesh.rec.sends if r.journey == "webinar"]
    # Not "You're registered", the reminders and the follow-ups at once: only the recording.
    assert [r.step for r in webinar] == ["email_05"]
    tl = timeline_summaries(await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="wb-1"), timeout=5))
    assert any(s.startswith("webinar: email_01 skipped: past its skip_after starts_at +0s") for s in tl), tl
    assert any("wait_day_before already past" in s for s in tl) and any("wait_2h already past" in s for s in tl)

    # The follow-ups keep their own days after the webinar.
    # A late registration that never attended is a no-show: its day-3 outreach is the no-show one.
    for day, step in ((3, "email_07_no_show"), (7, "email_08")):
        await advance(mesh.admin, mesh.clock, (started + timedelta(days=day) - mesh.clock.now()).total_seconds() - 60)
        assert [r.step for r in mesh.rec.sends if r.journey == "webinar"][-1] != step
        await advance(mesh.admin, mesh.clock, 120)
        assert [r.step for r in mesh.rec.sends if r.journey == "webinar"][-1] == step


async def test_a_registration_for_a_webinar_that_ended_long_ago_starts_no_sequence(mesh: Mesh) -> None:
    cy = lead("wb-2", "entrepreneur")
    await publish(mesh.pub, mesh.clock, cy, "lead_created")
    long_ago = mesh.clock.now() - timedelta(days=3)
    await publish(mesh.pub, mesh.clock, cy, "webinar_registered", webinar_id="w-old", starts_at=long_ago.isoformat())
    await settle(mesh.admin)
    await advance(mesh.admin, mesh.clock, 8 * DAY)
    assert [r for r in mesh.rec.sends if r.journey == "webinar"] == []
    assert "webinar" not in await statuses(mesh, "wb-2")
    tl = timeline_summaries(await mesh.admin.Timeline(common_pb2.TimelineRequest(lead_id="wb-2"), timeout=5))
    assert any(s.startswith("webinar: not entered: webinar_registered matched rule registered but its "
                            "enter_until starts_at +1d") for s in tl), tl
