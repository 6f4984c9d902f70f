"""The set-up the statement tests share (test_round_trips.py counts a report's statements, test_lookups.py
has PostgreSQL plan them): analytics' database holding the facts of one generated history, and the
statements a block of code runs on it, captured as the engine sends them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
from sqlalchemy import Engine, event

from nurture.db import Database, open_database
from nurture.settings import Settings
from services.analytics import storage
from services.analytics.domain.facts import Fact, from_bus
from services.analytics.server import MIGRATIONS
from tests.integration.analytics import history as h


@cache
def history_facts() -> tuple[Fact, ...]:
    """The facts analytics keeps of `history.generate(1)` (deterministic: generated once per process)."""
    return tuple(f for m in h.generate(1) if (f := from_bus(m)) is not None)


@dataclass(frozen=True)
class Recorded:
    db: Database
    facts: tuple[Fact, ...]

    def whole_range(self) -> storage.Query:
        """A report query over every day the history has."""
        days = sorted(f.at.date() for f in self.facts)
        return storage.Query(days[0], days[-1])


@contextmanager
def recorded(settings: Settings, *, first: int | None = None, planner: bool = False) -> Iterator[Recorded]:
    """Analytics' database (migrated) with the history's facts recorded in one batch, or only its `first`
    ones (the test records the rest itself); closed after the block. `planner`: the test reads PostgreSQL's
    plans, so on SQLite it is skipped before anything is recorded."""
    db = open_database(settings, service="analytics", migrations_dir=MIGRATIONS)
    try:
        if planner and db.is_sqlite:
            pytest.skip("PostgreSQL's planner only")
        facts = history_facts()
        with db.session() as s:
            storage.record(s, list(facts[:first]))
        yield Recorded(db, facts)
    finally:
        db.close()


@dataclass(frozen=True)
class Statement:
    sql: str
    parameters: Any


@contextmanager
def statements(engine: Engine) -> Iterator[list[Statement]]:
    """Every statement `engine` sends while the block runs, in order, with its parameters."""
    run: list[Statement] = []

    def seen(_conn: Any, _cursor: Any, sql: str, parameters: Any, _context: Any, _many: bool) -> None:
        run.append(Statement(sql, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        yield run
    finally:
        event.remove(engine, "before_cursor_execute", seen)


@contextmanager
def driver_statements(engine: Engine) -> Iterator[list[Statement]]:
    """Every statement run on a psycopg cursor of `engine`'s connections checked out while the block runs,
    in order, with its parameters: SQLAlchemy's and those written on the driver's cursor (`DriverWrites`),
    which SQLAlchemy's events do not see. PostgreSQL only."""
    import psycopg

    run: list[Statement] = []

    class Recording(psycopg.Cursor[Any]):
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            run.append(Statement(str(query), params))
            return super().execute(query, params, **kwargs)

    def checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        dbapi_connection.cursor_factory = Recording

    def checkin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.cursor_factory = psycopg.Cursor

    event.listen(engine, "checkout", checkout)
    event.listen(engine, "checkin", checkin)
    try:
        yield run
    finally:
        event.remove(engine, "checkout", checkout)
        event.remove(engine, "checkin", checkin)
