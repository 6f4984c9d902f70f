"""The settings every SQLite connection of a service gets (nurture.db.make_engine)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from nurture.db import make_engine


def test_each_connection_has_wal_and_a_page_cache_for_a_reports_pages(tmp_path: Path) -> None:
    # The default 2 MiB cache made every analytics report copy its pages from the OS again (more CPU than
    # the query's own work at full scale): each pooled connection, not only the first, gets the larger one.
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.connect() as first, engine.connect() as second:
            for conn in (first, second):
                # Negative: KiB. At least 32 MiB (SQLite's default is -2000).
                assert conn.execute(text("PRAGMA cache_size")).scalar() <= -32_768
                assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        engine.dispose()
