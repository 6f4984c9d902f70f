"""Every service's migration history: a database at any past revision upgrades to the schema a fresh
install has, the schema the storage code declares, on SQLite and (NURTURE_TEST_DATABASE_URL) on
PostgreSQL. A first revision written out step by step (not `create_all` from today's tables) is what
makes this hold for every future revision too."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import produce_migrations
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, inspect, text

from nurture.db import make_engine
from tests.conftest import PG_URL, _fresh_pg_schema

SERVICES = ("scoring", "journeys", "messaging", "crm_sync", "analytics")


def _migrations(service: str) -> Path:
    return Path(importlib.import_module(f"services.{service}").__file__ or "").parent / "migrations"


def _metadata(service: str) -> MetaData:
    if service == "journeys":
        from services.journeys.storage import Base

        return Base.metadata
    metadata: MetaData = importlib.import_module(f"services.{service}.tables").metadata
    return metadata


def _declared(service: str) -> Callable[..., bool]:
    """Autogenerate's filter: all but the indexes a service's tables module leaves to its migrations
    (`MIGRATION_ONLY_INDEXES`: made per database in a form SQLAlchemy does not reflect as made)."""
    tables = importlib.import_module(f"services.{service}.tables") if service != "journeys" else None
    skipped = frozenset(getattr(tables, "MIGRATION_ONLY_INDEXES", ()))

    def include(_obj: object, name: str | None, type_: str, _reflected: bool, _compare_to: object) -> bool:
        return not (type_ == "index" and name in skipped)
    return include


def _config(service: str, engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_migrations(service)))
    config.attributes["version_table"] = f"alembic_version_{service}"
    return config


def _upgrade(service: str, engine: Engine, target: str) -> None:
    config = _config(service, engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, target)


def _fresh_engine(tmp_path: Path, service: str, name: str) -> Engine:
    url = _fresh_pg_schema() if PG_URL else f"sqlite:///{tmp_path / f'{service}-{name}.db'}"
    return make_engine(url, service=service)


def _schema(engine: Engine) -> dict[str, object]:
    """Tables with their columns (name, type, nullability) and indexes, as the database reports them."""
    inspector = inspect(engine)
    out: dict[str, object] = {}
    for table in sorted(inspector.get_table_names()):
        columns = [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
            indexes = sorted((i["name"], tuple(str(c) for c in i["column_names"]), bool(i["unique"]))
                             for i in inspector.get_indexes(table))
        out[table] = {"columns": sorted(columns), "indexes": indexes,
                      "pk": inspector.get_pk_constraint(table)["constrained_columns"]}
    if engine.dialect.name == "sqlite":  # SQLAlchemy does not reflect SQLite's expression indexes
        with engine.connect() as conn:
            out["sqlite_index_names"] = sorted(conn.execute(text(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'")).scalars())
    return out


def _revisions(service: str) -> list[str]:
    script = ScriptDirectory(str(_migrations(service)))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


@pytest.mark.parametrize("service", SERVICES)
def test_upgrading_from_every_past_revision_ends_at_the_fresh_schema(tmp_path: Path, service: str) -> None:
    fresh = _fresh_engine(tmp_path, service, "fresh")
    try:
        _upgrade(service, fresh, "head")
        expected = _schema(fresh)
        with fresh.connect() as conn, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
            warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression-based index")
            diffs = produce_migrations(MigrationContext.configure(conn, opts={"include_object": _declared(service)}),
                                       _metadata(service)).upgrade_ops.as_diffs()
        assert [d for d in diffs if not (d[0] == "remove_table" and d[1].name.startswith("alembic_version"))] == []
    finally:
        fresh.dispose()
    for revision in _revisions(service)[:-1]:
        old = _fresh_engine(tmp_path, service, revision)
        try:
            _upgrade(service, old, revision)
            assert _schema(old) != expected, f"{revision} already has head's schema: the history says nothing"
            _upgrade(service, old, "head")
            assert _schema(old) == expected, f"upgrading from {revision} does not end at the fresh schema"
        finally:
            old.dispose()


@pytest.mark.parametrize("service", SERVICES)
def test_the_first_revision_is_written_out_not_made_from_todays_tables(service: str) -> None:
    first = sorted((_migrations(service) / "versions").glob("0001_*.py"))[0].read_text()
    assert "create_all" not in first and "op.create_table" in first
