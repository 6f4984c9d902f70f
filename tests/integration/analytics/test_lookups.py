"""On PostgreSQL the fold reads its state by key with an index: every SELECT `storage.record` runs is planned,
under the settings it sets, without a sequential scan (a scan per batch grew with the tables)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event

from nurture.db import open_database
from nurture.settings import Settings
from services.analytics import storage
from services.analytics.domain.facts import from_bus
from services.analytics.server import MIGRATIONS
from tests.integration.analytics import history as h


def test_the_folds_look_ups_by_key_are_index_scans(settings: Settings) -> None:
    db = open_database(settings, service="analytics", migrations_dir=MIGRATIONS)
    try:
        if db.is_sqlite:
            pytest.skip("PostgreSQL's planner only")
        stream = [f for m in h.generate(1) if (f := from_bus(m)) is not None]
        with db.session() as s:
            storage.record(s, stream[:300])
        run: list[tuple[str, Any]] = []

        def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
            if statement.lstrip().upper().startswith(("SELECT", "SET")):
                run.append((statement, parameters))

        event.listen(db.engine, "before_cursor_execute", seen)
        try:
            with db.session() as s:
                storage.record(s, stream[300:])
        finally:
            event.remove(db.engine, "before_cursor_execute", seen)
        assert sum(1 for sql, _ in run if sql.lstrip().upper().startswith("SELECT")) >= 6
        plans = []
        with db.session() as s:
            cursor = s.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            for sql, parameters in run:  # in order: a SET LOCAL the fold made applies to what follows
                if sql.lstrip().upper().startswith("SET"):
                    cursor.execute(sql, parameters)
                    continue
                cursor.execute("EXPLAIN " + sql, parameters)
                plans.append((sql.split("FROM", 1)[1].split()[0], "\n".join(r[0] for r in cursor.fetchall())))
            s.rollback()
        scans = [table for table, plan in plans if "Seq Scan" in plan]
        assert not scans, scans
    finally:
        db.close()


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
    db = open_database(settings, service="analytics", migrations_dir=MIGRATIONS)
    try:
        if db.is_sqlite:
            pytest.skip("PostgreSQL's planner only")
        stream = [f for m in h.generate(1) if (f := from_bus(m)) is not None]
        with db.session() as s:
            storage.record(s, stream)
        run: list[tuple[str, Any]] = []

        def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
            run.append((statement, parameters))

        days = sorted(f.at.date() for f in stream)
        event.listen(db.engine, "before_cursor_execute", seen)
        try:
            with db.session() as s:
                report = storage.attribution_report(s, storage.Query(days[0], days[-1]), model, 30)
        finally:
            event.remove(db.engine, "before_cursor_execute", seen)
        assert report["by_template"] and report["conversions"] > 0
        reads: list[bool] = []
        with db.session() as s:
            cursor = s.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            for sql, parameters in run:
                cursor.execute("EXPLAIN (FORMAT JSON) " + sql, parameters)
                reads += _reads(cursor.fetchone()[0][0]["Plan"], "analytics_touches")
        assert reads and all(reads), reads
    finally:
        db.close()
