"""On PostgreSQL the fold reads its state by key with an index: every SELECT `storage.record` runs (on SQLAlchemy's
or the driver's cursor) is planned, under the settings it sets, without a sequential scan (a scan per batch grew
with the tables)."""

from __future__ import annotations

from typing import Any

import pytest

from nurture.settings import Settings
from services.analytics import storage
from tests.integration.analytics.recorded import driver_statements, recorded, statements


def test_the_folds_look_ups_by_key_are_index_scans(settings: Settings) -> None:
    with recorded(settings, first=300, planner=True) as history:
        # The fold reads on the driver's cursor: statements seen there, not by SQLAlchemy's events.
        with driver_statements(history.db.engine) as run, history.db.session() as s:
            storage.record(s, list(history.facts[300:]))
        run = [st for st in run if st.sql.lstrip().upper().startswith(("SELECT", "SET"))]
        assert sum(1 for st in run if st.sql.lstrip().upper().startswith("SELECT")) >= 6
        plans = []
        with history.db.session() as s:
            cursor = s.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            for st in run:  # in order: a SET LOCAL the fold made applies to what follows
                if st.sql.lstrip().upper().startswith("SET"):
                    cursor.execute(st.sql, st.parameters)
                    continue
                cursor.execute("EXPLAIN " + st.sql, st.parameters)
                plans.append((st.sql.split("FROM", 1)[1].split()[0], "\n".join(r[0] for r in cursor.fetchall())))
            s.rollback()
        scans = [table for table, plan in plans if "Seq Scan" in plan]
        assert not scans, scans


def _reads(node: dict[str, Any], table: str, under_limit: bool = False) -> list[bool]:
    """For each read of `table` in a JSON plan tree: whether it is under a Limit node."""
    here = [under_limit] if node.get("Relation Name") == table else []
    below = under_limit or node["Node Type"] == "Limit"
    return here + [r for child in node.get("Plans", []) for r in _reads(child, table, below)]


@pytest.mark.parametrize("model", ["first", "last"])
def test_first_and_last_touch_attribution_seeks_one_touch_per_deal(settings: Settings, model: str) -> None:
    """Every read of the touches a first or last touch attribution makes is a per-deal seek (under its LIMIT
    1): with the pick joined back to the touches by id, PostgreSQL hashed the whole table once for the join
    and once more for the count of attributed deals (about 500 ms at 100,000 leads)."""
    with recorded(settings, planner=True) as history:
        with statements(history.db.engine) as run, history.db.session() as s:
            report = storage.attribution_report(s, history.whole_range(), model, 30)
        assert report["by_template"] and report["conversions"] > 0
        reads: list[bool] = []
        with history.db.session() as s:
            cursor = s.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            for st in run:
                cursor.execute("EXPLAIN (FORMAT JSON) " + st.sql, st.parameters)
                reads += _reads(cursor.fetchone()[0][0]["Plan"], "analytics_touches")
        assert reads and all(reads), reads
