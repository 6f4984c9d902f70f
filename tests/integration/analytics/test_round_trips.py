"""Statements a report runs do not grow with what it finds: a percentile call locates its bands in one
statement, narrows every located band to a sub-band in one more, and reads every located sub-band's running
counts in a third (one statement per band was most of progression's time on PostgreSQL at full scale: 30-odd
round trips over 90 days)."""

from __future__ import annotations

import re

from nurture.settings import Settings
from services.analytics import storage
from services.analytics.tables import stage_dwell, stage_dwell_bands, stage_dwell_subbands
from tests.integration.analytics.recorded import recorded, statements


def test_a_percentile_call_reads_its_located_bands_and_sub_bands_in_one_statement_each(settings: Settings) -> None:
    with recorded(settings) as history:
        with statements(history.db.engine) as run, history.db.session() as s:
            found = storage._percentiles(s, stage_dwell, stage_dwell_bands, stage_dwell_subbands,
                                         ("journey", "stage"), history.whole_range())
        assert len(found) >= 3, found  # several (journey, stage) keys, so several located bands
        assert all(n > 0 and med is not None and p90 is not None for n, med, p90 in found.values())
        assert len(run) == 3, run  # bands, sub-bands, the sub-bands' minutes


def test_lifecycle_and_qualification_read_the_ranges_changes_once(settings: Settings) -> None:
    """The lifecycle table's arrivals and the weekly qualification counts are one read of the range's
    changes by day and stage (two reads were each a pass over `analytics_lifecycle` in range), from the
    day rows of the band counts."""
    with recorded(settings) as history:
        with statements(history.db.engine) as run, history.db.session() as s:
            out = storage.progression_report(s, history.whole_range(), ("lifecycle", "qualification"))
        assert out["lifecycle"] and out["qualification"]
        sql = [" ".join(st.sql.split()) for st in run]
        # The arrivals by day and stage: one read, of the day rows of the band counts (not of every minute).
        by_day = "GROUP BY analytics_lifecycle_bands.start, analytics_lifecycle_bands.to_stage"
        arrivals = [q for q in sql if by_day in q]
        assert len(arrivals) == 1, sql
        # The minute rows are read by the percentiles only, in located bands (`band =`).
        minutes = [q for q in sql if re.search(r"\banalytics_lifecycle\b(?!_)", q)]
        assert minutes and all("band = " in q for q in minutes), minutes
