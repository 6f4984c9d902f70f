"""SQLite's WAL checkpoints run off the commits of a service's database (nurture.db._Checkpointer): a
commit never copies and syncs the WAL into the database file, and the WAL still starts over."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from nurture import db as dbmodule
from nurture.db import Database, make_engine

ROW = "x" * 3000  # about a page a row


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    monkeypatch.setattr(dbmodule._Checkpointer, "INTERVAL_S", 0.02)
    monkeypatch.setattr(dbmodule._Checkpointer, "RESTART_PAGES", 300)
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)"))
    database = Database(engine, service="c")
    yield database
    database.close()


def _insert(database: Database, rows: int) -> None:
    with database.session() as s:
        s.execute(text("INSERT INTO t (body) VALUES (:b)"), [{"b": ROW}] * rows)


def _wal_restarts(database: Database) -> int:
    """The WAL header's checkpoint sequence number: one more each time a write starts the WAL over."""
    with open(str(database.engine.url.database) + "-wal", "rb") as wal:
        return int.from_bytes(wal.read(16)[12:16], "big")


def test_a_commit_leaves_checkpoints_to_the_checkpointer(database: Database) -> None:
    # SQLite's default: the commit that takes the WAL past 1,000 pages checkpoints (and waits for two
    # fsyncs) before it returns. Each of the service's connections says it will not.
    with database.engine.connect() as first, database.engine.connect() as second:
        for conn in (first, second):
            assert conn.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 0


def test_the_wal_is_checkpointed_and_started_over_while_writes_go_on(database: Database) -> None:
    async def writes() -> None:
        for _ in range(60):  # 60 x 50 rows: about ten times RESTART_PAGES in all
            await database.run(_insert, database, 50, urgent=True)
            await asyncio.sleep(0.005)

    _insert(database, 1)
    first = _wal_restarts(database)
    asyncio.run(writes())
    # Without the writer thread's catch-up the WAL, checkpointed only while writes land, is never
    # started over: it grows for as long as the writes go on.
    assert _wal_restarts(database) - first >= 3
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 3001
