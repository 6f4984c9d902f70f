"""Statements a report runs do not grow with what it finds: a percentile call locates its bands in one
statement and reads every located band's running counts in one more (one statement per band was most of
progression's time on PostgreSQL at full scale: 30-odd round trips over 90 days)."""

from __future__ import annotations

from nurture.settings import Settings
from services.analytics import storage
from services.analytics.tables import stage_dwell, stage_dwell_bands
from tests.integration.analytics.recorded import recorded, statements


def test_a_percentile_call_reads_its_located_bands_in_one_statement(settings: Settings) -> None:
    with recorded(settings) as history:
        with statements(history.db.engine) as run, history.db.session() as s:
            found = storage._percentiles(s, stage_dwell, stage_dwell_bands, ("journey", "stage"),
                                         history.whole_range())
        assert len(found) >= 3, found  # several (journey, stage) keys, so several located bands
        assert all(n > 0 and med is not None and p90 is not None for n, med, p90 in found.values())
        assert len(run) == 2, run


def test_lifecycle_and_qualification_read_the_ranges_changes_once(settings: Settings) -> None:
    """The lifecycle table's arrivals and the weekly qualification counts are one read of the range's
    changes by day and stage (two reads were each a pass over `analytics_lifecycle` in range)."""
    with recorded(settings) as history:
        with statements(history.db.engine) as run, history.db.session() as s:
            out = storage.progression_report(s, history.whole_range(), ("lifecycle", "qualification"))
        assert out["lifecycle"] and out["qualification"]
        # The percentiles read located bands only (`band =`); a read of the whole range names no band.
        sql = [" ".join(st.sql.split()) for st in run]
        whole = [q for q in sql if "FROM analytics_lifecycle WHERE" in q and ".band =" not in q]
        assert len(whole) == 1, whole
