"""Schema migrations in a deployment of replicas: replicas starting together on PostgreSQL migrate once
(the others wait and find the schema at head), `nurture migrate` does it before they start, and a
process whose database is not at its code's newest revision refuses to start when told to only check."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import text

from cli.main import main as nurture
from nurture.db import SchemaMismatch, _alembic_config, make_engine, migrate, open_database
from nurture.settings import Settings
from tests.conftest import PG_URL, _fresh_pg_schema

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "crm_sync" / "migrations"
# The newest revision, read from the scripts: a new crm_sync migration does not edit this test.
HEAD = ScriptDirectory.from_config(_alembic_config("crm_sync", MIGRATIONS)).get_current_head()


def _at(settings: Settings, revision: str) -> None:
    """The service's database brought to `revision` (an older deployment's schema)."""
    engine = make_engine(settings.database_url_for("crm_sync"), service="crm_sync")
    config = _alembic_config("crm_sync", MIGRATIONS)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    engine.dispose()


def _replicas_migrate(url: str, replicas: int) -> tuple[list[str], list[BaseException]]:
    results: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(replicas)

    def replica() -> None:
        engine = make_engine(url, service="crm_sync")
        try:
            start.wait()
            results.append(migrate(engine, service="crm_sync", migrations_dir=MIGRATIONS))
        except BaseException as exc:  # every failure is the finding
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=replica) for _ in range(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results, errors


@pytest.mark.skipif(not PG_URL, reason="replicas share a PostgreSQL database (NURTURE_TEST_DATABASE_URL)")
def test_replicas_starting_together_on_postgresql_migrate_once() -> None:
    for _round in range(3):
        results, errors = _replicas_migrate(_fresh_pg_schema(), 6)
        assert errors == [] and results == [HEAD] * 6


def test_a_process_told_to_check_refuses_an_older_schema_and_says_what_to_run(settings: Settings) -> None:
    _at(settings, "crm_sync_0002")
    with pytest.raises(SchemaMismatch, match=rf"at crm_sync_0002, this code needs {HEAD}; run `nurture migrate`"):
        open_database(settings.with_overrides(migrate="check"), service="crm_sync", migrations_dir=MIGRATIONS)
    # The default migrates on start, and a checking process then serves.
    open_database(settings, service="crm_sync", migrations_dir=MIGRATIONS).close()
    open_database(settings.with_overrides(migrate="check"), service="crm_sync", migrations_dir=MIGRATIONS).close()


def test_a_schema_newer_than_the_code_is_refused_even_when_migrating_on_start(settings: Settings) -> None:
    _at(settings, HEAD)
    engine = make_engine(settings.database_url_for("crm_sync"), service="crm_sync")
    with engine.begin() as conn:  # what a later release's migration leaves behind
        conn.execute(text("UPDATE alembic_version_crm_sync SET version_num = 'crm_sync_0099'"))
    engine.dispose()
    for mode in ("check", "on_start"):
        with pytest.raises(Exception, match="crm_sync_0099") as err:
            open_database(settings.with_overrides(migrate=mode), service="crm_sync", migrations_dir=MIGRATIONS)
        assert mode == "on_start" or isinstance(err.value, SchemaMismatch)


def test_nurture_migrate_brings_every_service_to_head_and_check_says_so(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("NURTURE_DATABASE_URL", "NURTURE_MIGRATE"):
        monkeypatch.delenv(name, raising=False)
    if settings.database_url:
        monkeypatch.setenv("NURTURE_DATABASE_URL", settings.database_url)
    data = str(settings.data_dir)
    assert nurture(["migrate", "--check", "--data-dir", data]) == 1
    assert "run `nurture migrate`" in capsys.readouterr().err
    assert nurture(["migrate", "--data-dir", data]) == 0
    out = capsys.readouterr().out
    assert f"crm_sync: at {HEAD} (head)" in out and "scoring: at scoring_" in out
    assert nurture(["migrate", "--check", "--data-dir", data, "--service", "crm_sync"]) == 0


def test_a_wrong_migrate_mode_is_a_settings_error() -> None:
    from nurture.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="NURTURE_MIGRATE='later'"):
        load_settings(environ={"NURTURE_MIGRATE": "later"})
