"""Quiet-period clocks: the seed's "no email opens for 14+ days" is not "no engagement"."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from services.journeys.domain.definitions import DefinitionError, read_settings
from services.journeys.domain.state import ACTIVE
from tests.unit.journeys.test_engine import T0, Harness

KEY = "~email_inactivity"


def _fire_due(h: Harness) -> None:
    """Fire every lead-level clock timer that is due (what the runner's timer loop does)."""
    entry = h.state.dates.get(KEY)
    if entry and not entry.get("fired"):
        from services.journeys.domain.state import parse_time

        at = parse_time(entry["at"])
        if at is not None and at <= h.now:
            out = h.engine.date_due(h.state, KEY, int(entry["token"]), h.now)
            h.transitions += [t.summary for t in out.transitions]
            h.drive()


def _walk(h: Harness, days: int, every: timedelta | None = None, etype: str = "page_viewed") -> None:
    """Advance day by day, firing clocks; with `every`, the lead does `etype` that often."""
    for day in range(days):
        h.advance(days=1)
        if every is not None and day % every.days == 0:
            h.message(etype, category="country")
        _fire_due(h)


def _prospect() -> Harness:
    h = Harness("skilled_professional")
    h.lead["lifecycle_stage"] = "lead"
    h.message("lead_created")
    h.message("email_sent", journey="skilled_professional", step="email_01")
    return h


def test_a_lead_who_browses_but_never_opens_is_re_engaged_14_days_after_the_first_email() -> None:
    h = _prospect()
    _walk(h, 13, every=timedelta(days=2))
    assert "re_engagement" not in h.state.enrollments
    _walk(h, 1)
    assert h.state.enrollments["re_engagement"].status in (ACTIVE, "completed", "exited")
    assert [k for k in h.sent if ":re_engagement:1:email_01_skilled_professional:" in k]
    assert any("email_inactivity days=14 matched rule re_engagement" in t for t in h.transitions), h.transitions


@pytest.mark.parametrize("segment", ["skilled_professional", "family", "entrepreneur"])
def test_a_dormant_lead_is_re_engaged_once_with_its_segments_content(segment: str) -> None:
    """The last new-user run's find: on day 14 a dormant skilled professional got two emails, the segment
    journey's re-engagement side step and the re-engagement journey's check-in. The re-engagement journey
    owns the reach; its check-in is the segment's specialized content."""
    h = Harness(segment)
    h.lead["lifecycle_stage"] = "lead"
    h.message("lead_created")
    h.message("email_sent", journey=segment, step="email_01")
    _walk(h, 13)
    h.advance(days=1)
    assert h.now == T0 + timedelta(days=14)
    day_14 = len(h.sent)
    _fire_due(h)   # no opens for 14 days (email_inactivity) ...
    fired = h.engine.inactivity_due(h.state, h.state.inactive_token, h.now)   # ... nor any engagement
    h.transitions += [t.summary for t in fired.transitions]
    h.drive()
    reach = h.sent[day_14:]
    assert len(reach) == 1 and f":re_engagement:1:email_01_{segment}:" in reach[0], reach


def test_an_open_before_day_14_moves_the_re_engagement_date() -> None:
    h = _prospect()
    _walk(h, 10)
    h.message("email_opened", journey="skilled_professional", step="email_01")
    opened_at = h.now
    _walk(h, 13)
    assert "re_engagement" not in h.state.enrollments, "13 days after the open is not yet 14"
    _walk(h, 1)
    assert h.now - opened_at == timedelta(days=14)
    assert "re_engagement" in h.state.enrollments
    assert h.state.enrollments["re_engagement"].entered_at == opened_at + timedelta(days=14)


def test_the_clock_starts_only_with_the_first_email() -> None:
    h = Harness("skilled_professional")
    h.lead["lifecycle_stage"] = "lead"
    h.message("lead_created")
    assert KEY not in h.state.dates
    h.message("email_sent")
    first = h.state.dates[KEY]["since"]
    h.advance(days=3)
    h.message("email_sent")
    assert h.state.dates[KEY]["since"] == first, "later sends do not restart the clock"
    assert h.state.dates[KEY]["at"] == (T0 + timedelta(days=14)).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("raw", [
    {"event": "Bad Name", "days": [14], "reset_by": ["email_opened"], "starts_on": ["email_sent"]},
    {"event": "x", "days": [], "reset_by": ["email_opened"], "starts_on": ["email_sent"]},
    {"event": "x", "days": [0], "reset_by": ["email_opened"], "starts_on": ["email_sent"]},
    {"event": "x", "days": [14], "reset_by": [], "starts_on": ["email_sent"]},
    {"event": "x", "days": [14], "reset_by": ["a"], "starts_on": ["b"], "surprise": 1},
])
def test_bad_clocks_are_refused(raw: dict[str, object], tmp_path: Path) -> None:
    (tmp_path / "_settings.yaml").write_text(yaml.safe_dump({"clocks": [raw]}))
    with pytest.raises(DefinitionError, match=r"^_settings\.yaml clocks\[0\]\.\w+: "):
        read_settings(tmp_path)


def test_a_dormant_lead_matching_a_trigger_table_row_gets_that_rows_email_and_only_it() -> None:
    """This run's find (after the segment one): a dormant lead who had downloaded a resource got the
    re-engagement check-in and the trigger table's "initial engagement then inactivity" story on the
    same day. The table's rows enrol the re-engagement journey, whose first email is the row's."""
    h = Harness("family")
    h.lead["lifecycle_stage"] = "lead"
    h.lead["counters"] = {"downloads": 1, "opens_30d": 0}
    h.message("lead_created")
    h.message("email_sent", journey="family", step="email_01")
    _walk(h, 13)
    h.advance(days=1)
    day_14 = len(h.sent)
    _fire_due(h)
    fired = h.engine.inactivity_due(h.state, h.state.inactive_token, h.now)
    h.transitions += [t.summary for t in fired.transitions]
    h.drive()
    reach = h.sent[day_14:]
    assert len(reach) == 1 and ":re_engagement:1:email_01_story:" in reach[0], reach
