"""`on_entry` triggers: a rule whose condition is the lead's state also holds on the event that enrolled
the lead, checked once the entry's steps due at once have run (the welcome goes, then the jump), once.
Rules without it (lead_magnet's `another_download`, about another event) keep ignoring that event."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from nurture.busmessage import BusMessage, LeadSnapshot
from services.journeys.domain.definitions import DefinitionError, load, read_playbook
from services.journeys.domain.state import Enrollment, iso
from tests.unit.journeys.test_engine import Harness


def _steps(h: Harness, journey: str) -> list[str]:
    return [k.split(":")[3] for k in h.sent if f":{journey}:" in k]


def _urgent(h: Harness, **consent: bool) -> None:
    h.lead["attributes"] = {"profession": "nurse", "timeline": "urgent"}
    h.lead["consent"] = dict(consent)


def test_consent_given_later_enrols_and_the_urgent_timeline_jumps_once_after_the_welcome() -> None:
    # The new-user report: created with an urgent timeline and no consent, consent given by a PATCH (the
    # lead_updated that enrols), the CRM's write-back absent. The lead got email_01 and email_02 and
    # never reached the decision stage.
    h = Harness()
    _urgent(h, email=False)
    h.message("lead_created")
    assert "skilled_professional" not in h.state.enrollments
    h.lead["consent"] = {"email": True}
    h.message("lead_updated", changed=["consent"])
    assert _steps(h, "skilled_professional") == ["email_01", "email_15"]
    h.advance(days=1)
    assert _steps(h, "skilled_professional") == ["email_01", "email_15"]
    e = h.state.enrollments["skilled_professional"]
    assert e.stage == "decision" and e.entry_events == []
    jumps = [t for t in h.transitions if "matched rule urgent_timeline " in t]
    assert jumps == ["skilled_professional: jumped to decision stage: lead_updated attributes.timeline=urgent "
                     "properties.timeline=None "
                     "stage_index=0 matched rule urgent_timeline (on entry, once the entry's first steps had run)"], \
        h.transitions
    h.advance(days=10)
    assert _steps(h, "skilled_professional")[:3] == ["email_01", "email_15", "email_16"]
    # The triggers tables' profile row holds on that event too: the expedited pathways email, once (the
    # frequency budget held it a day behind the two emails above).
    assert _steps(h, "triggers") == ["timeline_urgency"]
    assert any("triggers: queued timeline_urgency: lead_updated timeline=urgent matched rule "
               "urgent_timeline_profile (on entry" in t for t in h.transitions), h.transitions


def test_an_enrolment_resumed_when_consent_comes_back_jumps_on_the_urgent_timeline_once() -> None:
    # A lead welcomed, who withdrew email consent, said their timeline was urgent while consent was off
    # (nothing listens then) and gave consent again: the resumed enrolment went on with email_02 and
    # never reached the decision stage, as an entry on that event would have (the welcome went before).
    h = Harness()
    h.lead["attributes"] = {"profession": "nurse"}
    h.message("lead_created")
    assert _steps(h, "skilled_professional") == ["email_01"]
    h.advance(hours=2)
    h.lead["consent"] = {"email": False}
    h.message("lead_updated", changed=["consent"])
    assert h.state.enrollments["skilled_professional"].outcome == "no_consent"
    h.lead["attributes"]["timeline"] = "urgent"
    h.message("lead_updated", changed=["attributes.timeline"])
    h.advance(hours=2)
    h.lead["consent"] = {"email": True}
    h.message("lead_updated", changed=["consent"])
    e = h.state.enrollments["skilled_professional"]
    assert any("re-entered after email consent was given again" in t for t in h.transitions)
    assert _steps(h, "skilled_professional") == ["email_01", "email_15"]
    assert e.stage == "decision" and e.entry_events == []
    jumps = [t for t in h.transitions if "matched rule urgent_timeline " in t]
    assert len(jumps) == 1 and jumps[0].endswith("(on entry, once the entry's first steps had run)"), jumps
    h.message("lead_updated", changed=["attributes.timeline"])
    h.advance(days=10)
    assert _steps(h, "skilled_professional")[:3] == ["email_01", "email_15", "email_16"]
    assert len([t for t in h.transitions if "matched rule urgent_timeline " in t]) == 1


def test_a_resumed_enrolment_whose_welcome_had_not_gone_sends_it_before_the_jump() -> None:
    # Consent withdrawn while the welcome was held by the budget: resumed, the welcome goes first, then
    # the jump, once.
    h = Harness()
    _urgent(h, email=True)
    h.state.sends = [iso(h.now - timedelta(hours=1)) or ""] * 5   # the budget is full for a while
    h.message("lead_created")
    assert _steps(h, "skilled_professional") == []
    h.lead["consent"] = {"email": False}
    h.message("lead_updated", changed=["consent"])
    assert h.state.enrollments["skilled_professional"].outcome == "no_consent"
    h.advance(days=7)
    h.state.sends = []
    h.lead["consent"] = {"email": True}
    h.message("lead_updated", changed=["consent"])
    h.advance(minutes=1)
    assert _steps(h, "skilled_professional")[:2] == ["email_01", "email_15"]
    assert len([t for t in h.transitions if "matched rule urgent_timeline " in t]) == 1


def test_a_lead_created_urgent_gets_the_welcome_then_jumps_once_and_the_crm_update_changes_nothing() -> None:
    h = Harness()
    _urgent(h, email=True)
    h.message("lead_created")
    assert _steps(h, "skilled_professional") == ["email_01", "email_15"]
    welcome = h.transitions.index(next(t for t in h.transitions if "email_01" in t or "Welcome" in t))
    jump = h.transitions.index(next(t for t in h.transitions if "matched rule urgent_timeline" in t))
    assert welcome < jump
    h.advance(minutes=5)
    h.lead["crm_id"] = "crm-1"
    h.message("lead_updated", changed=["crm_id"], source="crm")   # crm_sync writes the CRM id back
    h.advance(days=6)
    assert _steps(h, "skilled_professional") == ["email_01", "email_15", "email_16"]
    assert len([t for t in h.transitions if "matched rule urgent_timeline " in t]) == 1
    assert _steps(h, "triggers") == ["timeline_urgency"]


def test_an_update_before_the_welcome_ran_waits_for_it_and_the_rule_fires_once() -> None:
    # The CRM's write-back can reach the journeys service before the timer that runs the welcome: the
    # on_entry rule waits with the enrolling event, so the welcome still goes first.
    h = Harness()
    _urgent(h, email=True)
    for etype in ("lead_created", "lead_updated"):
        msg = BusMessage(id=etype, lead_id="l-1", type=etype, properties={}, lead=LeadSnapshot.from_dict(h.lead),
                         occurred_at=iso(h.now))
        h.transitions += [t.summary for t in h.engine.on_message(h.state, msg, h.now).transitions]
    held = h.state.enrollments["skilled_professional"].entry_events
    assert [x["type"] for x in held] == ["lead_created", "lead_updated"]
    h.drive()
    assert _steps(h, "skilled_professional") == ["email_01", "email_15"]
    assert len([t for t in h.transitions if "matched rule urgent_timeline " in t]) == 1


def test_a_welcome_held_by_the_budget_goes_before_the_jump() -> None:
    h = Harness()
    _urgent(h, email=True)
    h.state.sends = [iso(h.now - timedelta(hours=1)) or ""] * 5   # the budget is full for a while
    h.message("lead_created")
    e = h.state.enrollments["skilled_professional"]
    assert e.waiting == "budget" and e.entry_events and _steps(h, "skilled_professional") == []
    h.advance(days=7)
    assert _steps(h, "skilled_professional")[:2] == ["email_01", "email_15"]


def test_extended_family_on_the_enrolling_event_sends_the_guide_once_after_the_welcome() -> None:
    h = Harness("family")
    h.lead["attributes"] = {"extended_family": True}
    h.message("lead_created")
    assert _steps(h, "family") == ["email_01", "reunification_guide"]
    h.lead["crm_id"] = "crm-2"
    h.message("lead_updated", changed=["crm_id"], source="crm")
    h.advance(days=1)
    assert _steps(h, "family") == ["email_01", "reunification_guide", "email_02"]


def test_a_lead_without_the_state_gets_no_on_entry_action_and_keeps_nothing() -> None:
    h = Harness()
    h.message("lead_created")
    e = h.state.enrollments["skilled_professional"]
    assert e.entry_events == [] and "entry_events" not in e.to_json()
    assert _steps(h, "skilled_professional") == ["email_01"]
    assert _steps(h, "triggers") == []


def test_lead_magnets_first_download_is_delivered_once() -> None:
    # another_download is about another event: the download that enrols is email_01's alone.
    h = Harness()
    h.message("lead_created")
    h.message("resource_downloaded", resource="g-1", resource_title="Guide")
    h.advance(days=1)
    assert _steps(h, "lead_magnet") == ["email_01", "email_02"]
    assert h.state.enrollments["lead_magnet"].entry_events == []
    h.message("resource_downloaded", resource="g-2", resource_title="Other")
    assert _steps(h, "lead_magnet") == ["email_01", "email_02", "deliver_again"]


def test_pending_entry_events_survive_the_stored_form() -> None:
    h = Harness()
    _urgent(h, email=True)
    msg = BusMessage(id="c", lead_id="l-1", type="lead_created", properties={"source": "api"},
                     lead=LeadSnapshot.from_dict(h.lead), occurred_at=iso(h.now))
    h.engine.on_message(h.state, msg, h.now)
    e = h.state.enrollments["skilled_professional"]
    back = Enrollment.from_json(e.to_json())
    assert back.entry_events == [{"type": "lead_created", "properties": {"source": "api"}}]


def _doc(key: str) -> dict[str, Any]:
    return copy.deepcopy(read_playbook()[key])


def test_on_entry_is_set_on_the_state_rules_and_not_on_another_download() -> None:
    journeys = {key: load(_doc(key)) for key in ("skilled_professional", "family", "triggers", "lead_magnet")}
    on = {(k, r.name) for k, j in journeys.items() for r in j.triggers if r.on_entry}
    assert on == {("skilled_professional", "urgent_timeline"), ("family", "extended_family"),
                  ("triggers", "urgent_timeline_profile")}


@pytest.mark.parametrize("change,problem", [
    (lambda d: d["triggers"][0].update(on_entry="yes"), "triggers.another_download: on_entry must be true or false"),
    (lambda d: d["exit"][0].update(on_entry=True), "exit.converted: on_entry is a trigger rule's"),
    (lambda d: d["entry"][0].update(on_entry=True), "entry.downloaded: on_entry is a trigger rule's"),
    (lambda d: d["triggers"].append({"name": "late", "events": ["webinar_attended"], "do": {"send": "deliver_again"},
                                     "on_entry": True}),
     "triggers.late: on_entry, but none of its events (webinar_attended) enrols the lead (entry rules' events)"),
])
def test_on_entry_is_validated(change: Any, problem: str) -> None:
    doc = _doc("lead_magnet")
    change(doc)
    with pytest.raises(DefinitionError) as err:
        load(doc)
    assert problem in err.value.problems
