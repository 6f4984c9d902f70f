"""A lead's stored journeys state read by a release older than the one that wrote it (a rolling upgrade
runs both on the replicas): keys the reader does not know are neither refused nor dropped when it
writes the state back."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from services.journeys.domain.state import ACTIVE, Enrollment, LeadState

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def enrolment() -> Enrollment:
    return Enrollment(ekey="skilled_welcome", journey="skilled_welcome", version=2, instance="", entry=1,
                      status=ACTIVE, step="email_2", stage="welcome", due=T0, entered_at=T0, stage_at=T0,
                      retries=2, entry_events=[{"type": "lead_created", "properties": {}}])


def test_an_enrolment_round_trips_as_before() -> None:
    e = enrolment()
    raw = json.loads(json.dumps(e.to_json()))
    assert "newer" not in raw  # no key of its own in what is stored
    assert Enrollment.from_json(raw) == e


def test_an_enrolment_written_by_a_newer_release_keeps_its_unknown_keys() -> None:
    raw = json.loads(json.dumps(enrolment().to_json()))
    raw["holdout_group"] = "B"          # fields a newer release added
    raw["pacing"] = {"per_day": 2}
    read = Enrollment.from_json(raw)     # (this release raised TypeError here before)
    assert read.step == "email_2" and read.retries == 2 and read.due == T0
    read.step, read.retries = "email_3", 0   # this release moves it on...
    written = read.to_json()
    # ...and writes back what the newer release will read: its keys as they were, this release's own keys
    # as this release left them.
    assert written["holdout_group"] == "B" and written["pacing"] == {"per_day": 2}
    assert written["step"] == "email_3" and "retries" not in written
    assert Enrollment.from_json(json.loads(json.dumps(written))).newer == {"holdout_group": "B",
                                                                            "pacing": {"per_day": 2}}


def test_a_newer_key_never_overrides_one_this_release_knows() -> None:
    e = enrolment()
    e.newer = {"step": "stale", "extra": 1}   # not possible from from_json; guarded all the same
    out = e.to_json()
    assert out["step"] == "email_2" and out["extra"] == 1


def test_a_leads_state_keeps_a_newer_releases_keys() -> None:
    state = LeadState(lead_id="L1", lead={"segment": "skilled"}, opted_out={"nurture": "unsubscribed"})
    raw = json.loads(json.dumps(state.to_json()))
    assert "newer" not in raw and "enrollments" not in raw
    assert LeadState.from_json(raw, []) == state
    raw["frequency_window"] = ["2026-03-02T09:00:00Z"]
    read = LeadState.from_json(raw, [enrolment()])
    assert read.opted_out == {"nurture": "unsubscribed"} and list(read.enrollments) == ["skilled_welcome"]
    read.opted_out.clear()
    written = read.to_json()
    assert written["frequency_window"] == ["2026-03-02T09:00:00Z"] and written["opted_out"] == {}
