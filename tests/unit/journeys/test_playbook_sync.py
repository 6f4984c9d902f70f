"""Which playbook files a journeys service stores as new versions as it starts, and which it publishes:
a journey an editor archived stays archived when its file changes (the new version waits as a draft)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from services.journeys.app.runner import playbook_changes
from services.journeys.storage import Definition

T0 = datetime(2026, 3, 2, tzinfo=UTC)


def row(key: str, version: int, status: str, doc: dict[str, object], source: str = "playbook") -> Definition:
    return Definition(key=key, version=version, status=status, source=source,
                      document=json.dumps(doc, sort_keys=True), created_at=T0)


def test_an_unchanged_file_stores_nothing_and_a_changed_one_is_published() -> None:
    old, new = {"key": "welcome", "steps": 1}, {"key": "welcome", "steps": 2}
    rows = [row("welcome", 1, "published", old)]
    assert playbook_changes(rows, {"welcome": old}) == []
    assert playbook_changes(rows, {"welcome": new}) == [("welcome", new, True)]
    assert playbook_changes([], {"fresh": new}) == [("fresh", new, True)]


def test_a_changed_file_of_an_archived_journey_is_stored_as_a_draft() -> None:
    old, new = {"key": "welcome", "steps": 1}, {"key": "welcome", "steps": 2}
    # Archived by an editor: its published version's status is archived, no version is published. Before,
    # the changed file was published at the next start, which brought the journey back to life.
    archived = [row("welcome", 1, "archived", old)]
    assert playbook_changes(archived, {"welcome": new}) == [("welcome", new, False)]
    # Brought back later (a version published again): a changed file is published as before.
    back = [*archived, row("welcome", 2, "published", new, source="api")]
    newer = {"key": "welcome", "steps": 3}
    assert playbook_changes(back, {"welcome": newer}) == [("welcome", newer, True)]
