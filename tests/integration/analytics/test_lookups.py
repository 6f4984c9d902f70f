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
