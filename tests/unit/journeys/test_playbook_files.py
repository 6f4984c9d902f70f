"""_settings.yaml and _calendar.yaml are read through nurture.datafiles: a bad file lists every problem
(as a DefinitionError, the journeys' DataFileError) and a missing one means the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from nurture.datafiles import DataFileError
from services.journeys.domain.calendar import load_calendar
from services.journeys.domain.definitions import DefinitionError, PlaybookSettings, read_playbook, read_settings


def test_a_bad_settings_file_lists_every_problem(tmp_path: Path) -> None:
    (tmp_path / "_settings.yaml").write_text(
        "budget: {window: soon, max: -1}\n"
        "clocks:\n  - {event: Quiet, days: [0], reset_by: [], starts_on: [email_sent], every: 1}\n"
        "exits:\n  - {name: x, events: []}\n"
        "inactivity: [14]\n")
    with pytest.raises(DefinitionError) as err:
        read_settings(tmp_path)
    assert err.value.problems == [
        "_settings.yaml budget.window: must be a duration such as 1d, 12h or 30m",
        "_settings.yaml budget.max: input should be greater than or equal to 0",
        "_settings.yaml clocks[0].event: must be an event type such as email_inactivity",
        "_settings.yaml clocks[0].days: must be a list of positive whole days",
        "_settings.yaml clocks[0].reset_by: must be a list of event types",
        "_settings.yaml clocks[0].every: unknown key",
        "_settings.yaml exits[0].events: must be a list of event types",
        "_settings.yaml inactivity: unknown key",
    ]
    assert isinstance(err.value, DataFileError)


def test_without_a_settings_file_the_defaults_hold(tmp_path: Path) -> None:
    assert read_settings(tmp_path) == PlaybookSettings()
    (tmp_path / "_settings.yaml").write_text("exits:\n  - {name: x, events: [disqualified]}\n")
    assert {c for x in read_settings(tmp_path).exits for c in x.categories} == {"nurture"}


def test_a_bad_calendar_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "_calendar.yaml"
    path.write_text("campaigns:\n"
                    "  - {id: Bad, at: soon, event: x, audience: {fact: lead.id, exists: true}, expires: never}\n"
                    "  - {id: b, at: '2027-01-01T00:00:00Z', event: Y, properties: [1], audience: {fact: lead.id}}\n")
    with pytest.raises(DefinitionError) as err:
        load_calendar(path)
    problems = err.value.problems
    assert problems[:6] == [
        "_calendar.yaml campaigns[0].id: must be a lower-case word",
        "_calendar.yaml campaigns[0].at: must be an RFC 3339 time",
        "_calendar.yaml campaigns[0].expires: must be a duration such as 7d",
        "_calendar.yaml campaigns[1].event: must be an event type such as seasonal_window",
        "_calendar.yaml campaigns[1].properties: input should be a valid dictionary",
        problems[5],
    ] and problems[5].startswith("_calendar.yaml campaigns[1].audience: ") and len(problems) == 6
    assert load_calendar(tmp_path / "none.yaml").campaigns == ()


def test_a_journey_file_that_is_not_yaml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("key: [broken\n")
    with pytest.raises(DefinitionError, match=r"^broken\.yaml: "):
        read_playbook(tmp_path)
