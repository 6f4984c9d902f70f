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



async def test_a_seven_day_trial_gets_its_ending_emails_before_it_ends_and_skips_the_later_ones(
        settings: Settings, tmp_path: Path) -> None:
    # Seed, Free Trial Onboarding Sequence: +1d, +2d, +4d, +7d, +10d from the start, then "-3 days to end",
    # "-1 day to end" and "+1 day after end". A new user's 7-day trial had its +7d and +10d emails wait
    # past the end: "ends in 3 days" and "last day" went on day 10, in the same minute as "how was your
    # trial?". Now what would fall at or after the "-3 days" reminder is skipped, and the timeline says so.
    async with templates_mesh(settings, tmp_path, extra=("crm_sync", "analytics")) as mesh:
        await mesh.add_lead("trial7")
        start = await _advance(mesh, 0)
        r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"), json={
            "lead_id": "trial7", "type": "trial_started",
            "properties": {"ends_at": (start + timedelta(days=7)).isoformat(), "plan": "Family Plus"}})
        assert r.status_code == 202, r.text
        for _ in range(10):
            await _advance(mesh, 86400)
        messages = await _messages(mesh, "trial7")
        onboarding = {t.split(".")[1]: m for t, m in messages.items() if t.startswith("trial_onboarding.")}
        assert all(m["status"] == "sent" for m in onboarding.values()), onboarding
        days = {step: (datetime.fromisoformat(m["at"]) - start) / timedelta(days=1)
                for step, m in sorted(onboarding.items())}
        assert days == {"email_01": 0, "email_02": 1, "email_03": 2, "email_07": 4, "email_08": 6, "email_09": 8}
        r = await mesh.client.get("/v1/leads/trial7/timeline", headers=mesh.headers("viewer"))
        assert r.status_code == 200, r.text
        said = [str(item.get("summary")) for item in r.json()["items"]]
        reminder = (start + timedelta(days=4)).isoformat().replace("+00:00", "Z")
        for step in ("email_04", "email_05", "email_06"):
            assert any(s.startswith(f"trial_onboarding: {step} skipped: at or after its skip_from ends_at -3d "
                                    f"({reminder})") for s in said), said


def _on_time(days: dict[str, float], expected: dict[str, int]) -> bool:
    """The emails sent on their days: each may share its day with the lead's segment email, and whichever
    messaging takes first, the other waits the 2-hour minimum gap (policy.yaml): at most 2 hours late."""
    return days.keys() == expected.keys() and all(0 <= days[k] - v <= 2 / 24 for k, v in expected.items())


async def test_a_trial_of_three_days_or_less_gets_no_ends_in_3_days_email_with_its_welcome(
        settings: Settings, tmp_path: Path) -> None:
    # A trial of 3 days or less has its "-3 days to end" moment at or before its start: the reminder ("Your
    # trial ends in 3 days") went right after the welcome. Such a trial's first wait is already past at
    # the start, and goes to the last-day email (if_past): welcome, the last day's incentive the day before
    # the end, the follow-up the day after. A 4-day trial, one day longer, keeps its reminder on day 1.
    lengths = {"trial2": 2, "trial3": 3, "trial4": 4}
    async with templates_mesh(settings, tmp_path, extra=("crm_sync", "analytics")) as mesh:
        for lead_id in lengths:
            await mesh.add_lead(lead_id)
        start = await _advance(mesh, 0)
        for lead_id, length in lengths.items():
            r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"), json={
                "lead_id": lead_id, "type": "trial_started",
                "properties": {"ends_at": (start + timedelta(days=length)).isoformat(), "plan": "Family Plus"}})
            assert r.status_code == 202, r.text
        await _advance(mesh, 0)
        for _ in range(6):
            await _advance(mesh, 86400)
        for lead_id, length in lengths.items():
            messages = await _messages(mesh, lead_id)
            onboarding = {t.split(".")[1]: m for t, m in messages.items() if t.startswith("trial_onboarding.")}
            assert all(m["status"] == "sent" for m in onboarding.values()), (lead_id, onboarding)
            days = {step: (datetime.fromisoformat(m["at"]) - start) / timedelta(days=1)
                    for step, m in sorted(onboarding.items())}
            if length <= 3:
                assert _on_time(days, {"email_01": 0, "email_08": length - 1, "email_09": length + 1}), (lead_id, days)
                r = await mesh.client.get(f"/v1/leads/{lead_id}/timeline", headers=mesh.headers("viewer"))
                said = [str(item.get("summary")) for item in r.json()["items"]]
                assert any(s.startswith("trial_onboarding: wait_02 already past") and s.endswith("going to wait_08")
                           for s in said), said
            else:
                assert _on_time(days, {"email_01": 0, "email_07": 1, "email_08": 3, "email_09": 5}), (lead_id, days)


async def test_a_dormant_lead_who_starts_a_trial_gets_no_more_re_engagement_check_ins(
        settings: Settings, tmp_path: Path) -> None:
    # Seed, Re-Engagement Nurturing Workflow: "Reactivate dormant leads". A family lead who opened none of
    # its emails got the re-engagement check-in on day 14, started a free trial on day 15, and still got
    # "Something new we built for you" on day 17, its story, and so on to "A time-limited offer to
    # restart", beside the trial's own emails: the sequence's `reengaged` exit heard opens, clicks, views,
    # downloads, forms and videos only, not a trial, a webinar registration, an assessment or a checkout.
    async with templates_mesh(settings, tmp_path, extra=("crm_sync", "analytics")) as mesh:
        await mesh.add_lead("fam", attributes={"children": 2})
        start = await _advance(mesh, 0)
        for _ in range(14):
            await _advance(mesh, 86400)
        assert _sent(await _messages(mesh, "fam"), "re_engagement.email_01_family")
        await _advance(mesh, 86400)
        r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"), json={
            "lead_id": "fam", "type": "trial_started",
            "properties": {"ends_at": (start + timedelta(days=29)).isoformat(), "plan": "Family Plus"}})
        assert r.status_code == 202, r.text
        for _ in range(6):
            await _advance(mesh, 86400)
        messages = await _messages(mesh, "fam")
        assert _sent(messages, "trial_onboarding.email_01"), sorted(messages)
        assert [t for t in messages if t.startswith("re_engagement.")] == ["re_engagement.email_01_family"]
        r = await mesh.client.get("/v1/leads/fam", headers=mesh.headers("viewer"))
        assert r.status_code == 200, r.text
        journeys = {j["journey"]: j for j in r.json()["journeys"]}
        assert journeys["re_engagement"]["status"] == "completed", journeys
        # The family journey is paused by the trial now (trial_nurture), no longer by re-engagement.
        assert journeys["trial_nurture"]["status"] == "active", journeys
        r = await mesh.client.get("/v1/leads/fam/timeline", headers=mesh.headers("viewer"))
        assert r.status_code == 200, r.text
        said = [str(item.get("summary")) for item in r.json()["items"]]
        assert any(s.startswith("re_engagement: goal reached: trial_started") and "reengaged" in s
                   for s in said), said


async def test_a_demo_video_the_model_scores_sends_its_feature_follow_up(settings: Settings, tmp_path: Path) -> None:
    # Seed, Engagement Acceleration Triggers: "Watches product demo video | +7 points | Send feature-specific
    # follow-up content". A video named as a demo scored +7 and sent nothing: the trigger row read
    # category `demo` alone, the scoring model the video's name and category product_demo too.
    async with templates_mesh(settings, tmp_path, extra=("crm_sync", "analytics")) as mesh:
        await mesh.add_lead("demo")
        await _advance(mesh, 0)
        r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"), json={
            "lead_id": "demo", "type": "video_watched", "properties": {"video": "product-demo-2026"}})
        assert r.status_code == 202, r.text
        await _advance(mesh, 60)
        r = await mesh.client.get("/v1/leads/demo", headers=mesh.headers("viewer"))
        assert r.status_code == 200 and r.json()["score"] == 7, r.text
        follow_up = (await _messages(mesh, "demo")).get("triggers.demo_video")
        assert follow_up is not None and follow_up["status"] == "sent", follow_up


async def test_a_customer_who_reads_a_lot_is_not_sold_the_high_engagement_sequence(
        settings: Settings, tmp_path: Path) -> None:
    # Seed, High-Engagement Nurturing Workflow: "highly engaged prospects". A customer who viewed two
    # high-intent pages (scoring: +12 and the high_engagement signal) entered it and got "Your subscription
    # options (with a thank-you)" on day 15, and a "Personal outreach: highly engaged lead" task went to sales.
    async with templates_mesh(settings, tmp_path, extra=("crm_sync", "analytics")) as mesh:
        await mesh.add_lead("cust")
        await _advance(mesh, 0)
        for body in ({"type": "subscribed", "properties": {"plan": "pro"}},
                     {"type": "page_viewed", "properties": {"category": "high_intent", "page": "/pathways/ca"}},
                     {"type": "page_viewed", "properties": {"category": "high_intent", "page": "/pathways/au"}}):
            r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"), json={"lead_id": "cust", **body})
            assert r.status_code == 202, r.text
        for _ in range(16):
            await _advance(mesh, 86400)
        r = await mesh.client.get("/v1/leads/cust", headers=mesh.headers("viewer"))
        assert r.status_code == 200, r.text
        lead = r.json()
        assert lead["lifecycle_stage"] == "customer", lead
        journeys = {j["journey"] for j in lead["journeys"]}
        assert "customer" in journeys and "high_engagement" not in journeys, journeys
        messages = await _messages(mesh, "cust")
        assert _sent(messages, "customer.email_01"), sorted(messages)
        r = await mesh.client.get("/v1/leads/cust/timeline", headers=mesh.headers("viewer"))
        assert r.status_code == 200, r.text
        said = [str(item.get("summary")) for item in r.json()["items"]]
        assert any("rule repeated_high_intent fired" in s for s in said), said   # the signal was given
        assert not [t for t in messages if t.startswith("high_engagement.")], sorted(messages)


async def test_a_customer_who_starts_an_assessment_is_not_offered_trial_to_paid(
        settings: Settings, tmp_path: Path) -> None:
    # Seed, Trial Nurturing Workflow: "drive conversion to paid subscription". A paying customer who
    # started an assessment got "How is your trial going?" on day 7 and "Keep going: your trial-to-paid
    # offer" on day 11.
    async with templates_mesh(settings, tmp_path, extra=("crm_sync", "analytics")) as mesh:
        await mesh.add_lead("cust")
        await _advance(mesh, 0)
        for body in ({"type": "subscribed", "properties": {"plan": "pro"}},
                     {"type": "assessment_started", "properties": {"assessment": "eligibility"}}):
            r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"), json={"lead_id": "cust", **body})
            assert r.status_code == 202, r.text
        for _ in range(12):
            await _advance(mesh, 86400)
        messages = await _messages(mesh, "cust")
        assert _sent(messages, "customer.email_01"), sorted(messages)
        assert not [t for t in messages if t.startswith("trial_nurture.")], sorted(messages)
        # A prospect starting one still gets the sequence (its first five days here; its day-11 offer:
        # unit/journeys/test_seed_rows.py).
        await mesh.add_lead("pros")
        r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"), json={
            "lead_id": "pros", "type": "assessment_started", "properties": {"assessment": "eligibility"}})
        assert r.status_code == 202, r.text
        for _ in range(6):
            await _advance(mesh, 86400)
        pros = await _messages(mesh, "pros")
        assert all(_sent(pros, f"trial_nurture.email_0{n}") for n in (1, 2, 3, 4)), sorted(pros)


async def test_a_lead_whose_assessment_starts_as_it_is_created_gets_its_segment_welcome_at_once(
        settings: Settings, tmp_path: Path) -> None:
    # Seed, segment workflows: "Immediate: Welcome email". A new lead whose assessment started right after
    # it was created (before journeys ran its steps) had the segment journey paused by Trial Nurturing
    # before the welcome went, and got it 11 days later, when Trial Nurturing ended.
    async with templates_mesh(settings, tmp_path, extra=("crm_sync", "analytics")) as mesh:
        await mesh.add_lead("quick")
        r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"), json={
            "lead_id": "quick", "type": "assessment_started", "properties": {"assessment": "eligibility"}})
        assert r.status_code == 202, r.text
        start = await _advance(mesh, 0)
        await _advance(mesh, 6 * 3600)   # (messaging's minimum gap holds the second email of the moment)
        messages = await _messages(mesh, "quick")
        welcome = messages.get("skilled_professional.email_01")
        assert welcome is not None and welcome["status"] == "sent", messages
        assert datetime.fromisoformat(welcome["at"]) - start < timedelta(hours=6), (start, messages)
        r = await mesh.client.get("/v1/leads/quick", headers=mesh.headers("viewer"))
        assert r.status_code == 200, r.text
        status = {e["journey"]: e["status"] for e in r.json()["journeys"]}
        assert status["trial_nurture"] == "active" and status["skilled_professional"] == "paused", status


async def test_downloads_posted_together_each_get_their_own_resource_delivered(
        settings: Settings, tmp_path: Path) -> None:
    # Seed, Lead Magnet sequence: "Immediate: deliver lead magnet". Downloads handled in one batch (here
    # posted before the clock moves) each queued the delivery again, and every one of them named the last
    # resource: a lead who downloaded guides 1..5 got five emails for Guide 5.
    async with templates_mesh(settings, tmp_path, extra=("crm_sync", "analytics")) as mesh:
        await mesh.add_lead("reader")
        r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"), json={
            "lead_id": "reader", "type": "resource_downloaded",
            "properties": {"resource": "guide-0", "resource_title": "Guide Zero"}})
        assert r.status_code == 202, r.text
        await _advance(mesh, 0)
        titles = ["Guide One", "Guide Two", "Guide Three", "Guide Four", "Guide Five"]
        r = await mesh.client.post("/v1/events:batch", headers=mesh.headers("editor"), json={"events": [
            {"lead_id": "reader", "type": "resource_downloaded",
             "properties": {"resource": f"guide-{i + 1}", "resource_title": title}}
            for i, title in enumerate(titles)]})
        assert r.status_code == 202 and r.json()["accepted"] == 5, r.text
        await _advance(mesh, 6 * 3600)
        bodies = [" ".join(str(part.get_content()).split()) for m in mesh.mails()
                  if (part := m.get_body(preferencelist=("plain",))) is not None]
        thanked = [title for body in bodies for title in ["Guide Zero", *titles] if f"downloading {title}." in body]
        assert sorted(thanked) == sorted(["Guide Zero", *titles]), thanked


async def test_a_bottom_funnel_video_the_model_scores_alerts_sales(settings: Settings, tmp_path: Path) -> None:
    # Seed, Engagement Acceleration Triggers: "Engages with bottom-funnel content | +15 points | Alert sales
    # team for outreach". A bottom-funnel video scored +15 and alerted no one: the trigger row heard pages
    # and downloads only, the scoring model videos too.
    async with templates_mesh(settings, tmp_path, extra=("crm_sync", "analytics")) as mesh:
        await mesh.add_lead("bf")
        await _advance(mesh, 0)
        r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"), json={
            "lead_id": "bf", "type": "video_watched", "properties": {"category": "bottom_funnel"}})
        assert r.status_code == 202, r.text
        await _advance(mesh, 60)
        r = await mesh.client.get("/v1/leads/bf", headers=mesh.headers("viewer"))
        assert r.status_code == 200 and r.json()["score"] == 15, r.text
        r = await mesh.client.get("/v1/leads/bf/timeline", headers=mesh.headers("viewer"))
        assert r.status_code == 200, r.text
        fired = [i for i in r.json()["items"] if i["kind"] == "journey" and i["type"] == "trigger"
                 and i["details"]["rule"] == "bottom_funnel"]
        assert fired and fired[0]["details"]["step_to"] == "bottom_funnel", r.json()["items"]
        # and crm_sync made the row's task ("Bottom-funnel engagement: reach out"), journeys' dedupe key
        tasks = [i for i in r.json()["items"] if i["kind"] == "crm" and i["type"] == "task_created"
                 and ":triggers:" in i["details"]["dedupe_key"]]
        assert [t["details"]["kind"] for t in tasks] == ["sales_alert"], r.json()["items"]
