"""The Alembic history creates exactly the tables storage.py declares."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import produce_migrations
from alembic.migration import MigrationContext

from nurture.db import open_database
from nurture.settings import load_settings
from services.journeys.server import MIGRATIONS
from services.journeys.storage import Base


def test_migrations_match_the_models(tmp_path: Path) -> None:
    db = open_database(load_settings(environ={}, data_dir=tmp_path), service="journeys", migrations_dir=MIGRATIONS)
    try:
        with db.engine.connect() as conn:
            diffs = produce_migrations(MigrationContext.configure(conn), Base.metadata).upgrade_ops.as_diffs()
    finally:
        db.close()
    assert [d for d in diffs if not (d[0] == "remove_table" and d[1].name.startswith("alembic_version"))] == []
