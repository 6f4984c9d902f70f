"""Each service's Alembic history creates exactly the tables its storage declares, and upgrades an
older database in place."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import pytest
from alembic.autogenerate import produce_migrations
from alembic.migration import MigrationContext
from sqlalchemy import MetaData

from nurture.db import open_database
from nurture.settings import load_settings
from services.journeys.storage import Base

SERVICES = {"scoring": "services.scoring.tables", "messaging": "services.messaging.tables",
            "crm_sync": "services.crm_sync.tables"}


def _metadata(service: str) -> MetaData:
    if service == "journeys":
        return Base.metadata
    metadata: MetaData = importlib.import_module(SERVICES[service]).metadata
    return metadata


@pytest.mark.parametrize("service", ["scoring", "journeys", "messaging", "crm_sync"])
def test_migrations_match_the_models(tmp_path: Path, service: str) -> None:
    migrations = Path(importlib.import_module(f"services.{service}").__file__ or "").parent / "migrations"
    db = open_database(load_settings(environ={}, data_dir=tmp_path), service=service, migrations_dir=migrations)
    try:
        with db.engine.connect() as conn, warnings.catch_warnings():
            # SQLAlchemy cannot reflect expression indexes such as crm_sync's lower(email) on SQLite;
            # those are left out of the comparison (their migration creates them by name).
            warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
            warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression-based index")
            diffs = produce_migrations(MigrationContext.configure(conn), _metadata(service)).upgrade_ops.as_diffs()
    finally:
        db.close()
    assert [d for d in diffs if not (d[0] == "remove_table" and d[1].name.startswith("alembic_version"))] == []


# Upgrading from every past revision (an outbox without `trace`, a leads table without the
# lower(email) index, no model versions...) is tests/integration/platform/test_migration_history.py.
