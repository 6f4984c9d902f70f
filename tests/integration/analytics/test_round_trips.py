"""Statements a report runs do not grow with what it finds: a percentile call locates its bands in one
statement, narrows every located band to a sub-band in one more, and reads every located sub-band's running
counts in a third (one statement per band was most of progression's time on PostgreSQL at full scale: 30-odd
round trips over 90 days)."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import event

from nurture.db import open_database
from nurture.settings import Settings
from services.analytics import storage
from services.analytics.domain.facts import from_bus
from services.analytics.server import MIGRATIONS
from services.analytics.tables import stage_dwell, stage_dwell_bands, stage_dwell_subbands
from tests.integration.analytics import history as h


def test_a_percentile_call_reads_its_located_bands_and_sub_bands_in_one_statement_each(settings: Settings) -> None:
    db = open_database(settings, service="analytics", migrations_dir=MIGRATIONS)
    try:
        stream = [f for m in h.generate(1) if (f := from_bus(m)) is not None]
        with db.session() as s:
            storage.record(s, stream)
        days = sorted(f.at.date() for f in stream)
        run: list[str] = []

        def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            run.append(statement)

        event.listen(db.engine, "before_cursor_execute", seen)
        try:
            with db.session() as s:
                found = storage._percentiles(s, stage_dwell, stage_dwell_bands, stage_dwell_subbands,
                                             ("journey", "stage"), storage.Query(days[0], days[-1]))
        finally:
            event.remove(db.engine, "before_cursor_execute", seen)
        assert len(found) >= 3, found  # several (journey, stage) keys, so several located bands
        assert all(n > 0 and med is not None and p90 is not None for n, med, p90 in found.values())
        assert len(run) == 3, run  # bands, sub-bands, the sub-bands' minutes
    finally:
        db.close()


def test_lifecycle_and_qualification_read_the_ranges_changes_once(settings: Settings) -> None:
    """The lifecycle table's arrivals and the weekly qualification counts are one read of the range's
    changes by day and stage (two reads were each a pass over `analytics_lifecycle` in range), from the
    day rows of the band counts."""
    db = open_database(settings, service="analytics", migrations_dir=MIGRATIONS)
    try:
        stream = [f for m in h.generate(1) if (f := from_bus(m)) is not None]
        with db.session() as s:
            storage.record(s, stream)
        days = sorted(f.at.date() for f in stream)
        run: list[str] = []

        def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            run.append(" ".join(statement.split()))

        event.listen(db.engine, "before_cursor_execute", seen)
        try:
            with db.session() as s:
                out = storage.progression_report(s, storage.Query(days[0], days[-1]), ("lifecycle", "qualification"))
        finally:
            event.remove(db.engine, "before_cursor_execute", seen)
        assert out["lifecycle"] and out["qualification"]
        # The arrivals by day and stage: one read, of the day rows of the band counts (not of every minute).
        arrivals = [sql for sql in run if "GROUP BY analytics_lifecycle_bands.start, analytics_lifecycle_bands.to_stage"
                    in sql]
        assert len(arrivals) == 1, run
        # The minute rows are read by the percentiles only, in located bands (`band =`).
        minutes = [sql for sql in run if re.search(r"\banalytics_lifecycle\b(?!_)", sql)]
        assert minutes and all("band = " in sql for sql in minutes), minutes
    finally:
        db.close()
