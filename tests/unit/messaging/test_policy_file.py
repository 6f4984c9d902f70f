"""The delivery policy is data: policy.yaml is what runs, and a bad file says every problem."""

from __future__ import annotations

from datetime import UTC, datetime, time
from pathlib import Path

import pytest

from nurture.datafiles import DataFileError
from services.messaging.domain.policy import DEFAULT_POLICY, load_policy, next_window


def test_the_shipped_file_is_the_documented_policy() -> None:
    assert load_policy() == DEFAULT_POLICY


def test_a_changed_file_changes_the_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text('window_start: "09:30"\nwindow_end: "17:00"\ncap_per_day: 1\nmin_gap_s: 0\n')
    policy = load_policy(path)
    assert (policy.window_start, policy.window_end, policy.cap_per_day, policy.min_gap_s) == (
        time(9, 30), time(17, 0), 1, 0.0)
    assert policy.cap_per_week == DEFAULT_POLICY.cap_per_week  # what the file leaves out keeps its default
    # 09:00 UTC is outside a 09:30-17:00 window: mail waits until 09:30.
    assert next_window(datetime(2026, 12, 2, 9, 0, tzinfo=UTC), "UTC", policy) == datetime(
        2026, 12, 2, 9, 30, tzinfo=UTC)


def test_a_bad_file_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text('window_start: "late"\nwindow_end: "07:00"\ncap_per_day: 0\nmin_gap_s: -5\nburst: 3\n')
    with pytest.raises(DataFileError) as err:
        load_policy(path)
    text = str(err.value)
    for part in ("window_start: 'late' is not a time", "cap_per_day: must be a whole number",
                 "min_gap_s: must be a number of seconds", "burst: not a policy setting"):
        assert part in text, text
    path.write_text('window_start: "21:00"\nwindow_end: "07:00"\n')
    with pytest.raises(match="window_start must be before window_end"):
        load_policy(path)
    path.write_text("- not a mapping\n")
    with pytest.raises(match="must be a mapping"):
        load_policy(path)
