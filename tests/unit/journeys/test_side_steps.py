"""Side steps queued by the trigger tables: a sales alert never waits behind marketing email."""

from __future__ import annotations

from services.journeys.domain.state import Outcome, iso
from tests.unit.journeys.test_engine import Harness


def _sales_tasks(h: Harness) -> list[str]:
    return [k for k in h.sent if ":bottom_funnel:" in k]


def test_a_sales_alert_goes_at_once_while_a_trigger_email_waits_for_the_budget() -> None:
    h = Harness()
    h.message("lead_created")
    # Two nurture emails in the window: the next trigger email is held by the frequency budget.
    h.state.sends = [iso(h.now) or "", iso(h.now) or ""]
    h.message("page_viewed", category="documents")
    assert not [k for k in h.sent if ":document_research" in k], "the document email must wait for the budget"
    triggers = h.state.enrollments["triggers"]
    assert triggers.side_at is not None and triggers.side_at > h.now and triggers.side_held_by == "budget"
    held_until = triggers.side_at
    h.message("page_viewed", category="bottom_funnel")
    assert len(_sales_tasks(h)) == 1, "the sales task must go now, not behind the held email"
    # The held email keeps its hold and goes at its slot, once.
    assert triggers.side_at == held_until and any(triggers.side)
    h.now = held_until
    h.drive()
    assert len([k for k in h.sent if ":document_research" in k]) == 1 and triggers.side == []
    assert len(_sales_tasks(h)) == 1


def test_a_side_step_being_retried_holds_everything_queued_behind_it() -> None:
    h = Harness()
    h.message("lead_created")
    triggers = h.state.enrollments["triggers"]
    from datetime import timedelta

    from services.journeys.domain.state import Outcome

    triggers.side = ["bottom_funnel"]
    out = Outcome()
    effect = h.engine.next_effect(h.state, "triggers", h.now, out, side=True)
    assert effect is not None and effect.kind == "task"
    h.engine.retry_later(h.state, effect, h.now, timedelta(minutes=5), out, "crm_sync unavailable")
    assert h.engine.next_effect(h.state, "triggers", h.now + timedelta(minutes=1), out, side=True) is None
    again = h.engine.next_effect(h.state, "triggers", h.now + timedelta(minutes=5), out, side=True)
    assert again is not None and again.step == "bottom_funnel"
    h.engine.complete(h.state, again, h.now + timedelta(minutes=5), out, status="sent")
    assert triggers.side == [] and triggers.side_at is None and triggers.side_held_by == ""


def test_the_pricing_email_is_budget_exempt_and_goes_at_once() -> None:
    """The playbook's pricing trigger answers while the lead decides: past a full budget, counted in it."""
    h = Harness()
    h.message("lead_created")
    h.state.sends = [iso(h.now) or "", iso(h.now) or ""]
    h.message("page_viewed", category="pricing")
    assert len([k for k in h.sent if ":pricing_page" in k]) == 1
    assert len(h.state.sends) == 3


def test_a_task_queued_behind_a_send_the_budget_holds_in_the_same_pass_goes_at_once() -> None:
    """The send is held by the budget only as it is tried: what is queued behind it still goes now."""
    h = Harness()
    h.message("lead_created")
    h.state.sends = [iso(h.now) or "", iso(h.now) or ""]
    triggers = h.state.enrollments["triggers"]
    triggers.side = ["document_research", "bottom_funnel"]
    out = Outcome()
    effect = h.engine.next_effect(h.state, "triggers", h.now, out, side=True)
    assert effect is not None and effect.kind == "task" and effect.step == "bottom_funnel"
    assert triggers.side_held_by == "budget" and triggers.side_at is not None and triggers.side_at > h.now
    h.engine.complete(h.state, effect, h.now, out, status="sent")
    assert triggers.side == ["document_research"] and triggers.side_held_by == "budget"


def test_a_third_download_of_bottom_funnel_content_emails_and_alerts_sales_at_once_past_a_full_budget() -> None:
    """Seed: "Downloads 3+ resources: offer consultation or assessment" and "Engages with bottom-funnel
    content: alert sales team for outreach", both on one download, with two nurture emails already sent
    that day: neither waits a day for the budget."""
    h = Harness()
    h.message("lead_created")
    h.state.sends = [iso(h.now) or "", iso(h.now) or ""]
    h.lead["counters"] = {"downloads": 3}
    h.message("resource_downloaded", category="bottom_funnel")
    assert len([k for k in h.sent if ":resources_3plus:" in k]) == 1
    assert len(_sales_tasks(h)) == 1
    assert h.state.enrollments["triggers"].side == []


def _batch(h: Harness, *props: dict[str, str]) -> None:
    """Messages handled one after another before any effect is performed (a backlog after a restart,
    quick downloads, a clock advance), then the effects performed."""
    from nurture.busmessage import BusMessage, LeadSnapshot

    for i, p in enumerate(props):
        msg = BusMessage(id=f"batch{i}", lead_id=h.state.lead_id, type="resource_downloaded", properties=p,
                         lead=LeadSnapshot.from_dict(h.lead), occurred_at=iso(h.now))
        h.transitions += [t.summary for t in h.engine.on_message(h.state, msg, h.now).transitions]
    h.drive()


def _delivered(h: Harness) -> list[tuple[str, str]]:
    from services.journeys.domain.state import SendPayload

    return [(str(e.payload.context.get("resource")), str(e.payload.context.get("resource_title")))
            for e in h.effects if isinstance(e.payload, SendPayload) and e.step == "deliver_again"]


def test_downloads_handled_in_one_batch_each_deliver_their_own_resource() -> None:
    """lead_magnet's `deliver_again` queued by several downloads before it ran rendered every one with
    the last download's anchors: a lead who downloaded guides 1..19 got 19 emails for guide-19."""
    h = Harness()
    h.message("lead_created")
    h.message("resource_downloaded", resource="guide-0", resource_title="Guide 0")
    _batch(h, *({"resource": f"guide-{i}", "resource_title": f"Guide {i}"} for i in range(1, 20)))
    assert _delivered(h) == [(f"guide-{i}", f"Guide {i}") for i in range(1, 20)]
    # The sequence's follow-ups still speak of the latest.
    assert h.state.enrollments["lead_magnet"].anchors["resource"] == "guide-19"
    assert h.state.enrollments["lead_magnet"].side == []


def test_queued_side_steps_keep_their_anchors_through_the_stored_state() -> None:
    """The queue is stored between the trigger and the run (the service commits in between)."""
    import json

    from services.journeys.domain.state import Enrollment

    h = Harness()
    h.message("lead_created")
    h.message("resource_downloaded", resource="guide-0", resource_title="Guide 0")
    for i in (1, 2):
        msg_props = {"resource": f"guide-{i}", "resource_title": f"Guide {i}"}
        from nurture.busmessage import BusMessage, LeadSnapshot

        h.engine.on_message(h.state, BusMessage(id=f"b{i}", lead_id="l-1", type="resource_downloaded",
                                                properties=msg_props, lead=LeadSnapshot.from_dict(h.lead),
                                                occurred_at=iso(h.now)), h.now)
    e = h.state.enrollments["lead_magnet"]
    raw = json.loads(json.dumps(e.to_json()))
    assert raw["side"] == ["deliver_again", "deliver_again"]   # as an older release reads it
    h.state.enrollments["lead_magnet"] = Enrollment.from_json(raw)
    h.drive()
    assert _delivered(h) == [("guide-1", "Guide 1"), ("guide-2", "Guide 2")]


def test_a_side_queue_stored_by_an_older_release_still_loads_and_runs() -> None:
    import json

    from services.journeys.domain.state import Enrollment

    h = Harness()
    h.message("lead_created")
    h.message("resource_downloaded", resource="guide-0", resource_title="Guide 0")
    raw = json.loads(json.dumps(h.state.enrollments["lead_magnet"].to_json()))
    raw["side"] = ["deliver_again"]   # an older release's queue: step ids only, no side_anchors
    raw.pop("side_anchors", None)
    h.state.enrollments["lead_magnet"] = Enrollment.from_json(raw)
    assert h.state.enrollments["lead_magnet"].newer == {}
    h.drive()
    assert _delivered(h) == [("guide-0", "Guide 0")]   # its anchors: the enrolment's, as before
    assert "side_anchors" not in h.state.enrollments["lead_magnet"].to_json()
