"""crm_sync's data migrations: rows written before a revision read as the code after it expects, and
back (on SQLite and, with NURTURE_TEST_DATABASE_URL, on PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from tests.integration.platform.test_migration_history import _config, _fresh_engine, _upgrade

AT = datetime(2026, 3, 1, tzinfo=UTC)


def test_a_won_deals_revenue_moves_from_the_state_text_to_its_column_and_back(tmp_path: Path) -> None:
    engine = _fresh_engine(tmp_path, "crm_sync", "amount")
    rows = [("deal", "d-1", "closed_won 700.0"), ("deal", "d-2", "closed_won 1234.5678901234567"),
            ("deal", "d-3", "negotiation"), ("activity", "a-1", "sales_activity")]
    try:
        _upgrade("crm_sync", engine, "crm_sync_0005")
        with engine.begin() as conn:
            for kind, object_id, state in rows:
                conn.execute(sa.text("INSERT INTO crm_sync_inbound (crm, kind, object_id, lead_id, modified_at,"
                                     " state, event_id) VALUES ('hubspot', :k, :o, 'l-1', :at, :s, 'e')"),
                             {"k": kind, "o": object_id, "at": AT, "s": state})
        _upgrade("crm_sync", engine, "crm_sync_0006")

        def stored(columns: str) -> dict[str, tuple[object, ...]]:
            with engine.connect() as conn:
                return {r[0]: tuple(r[1:]) for r in conn.execute(sa.text(
                    f"SELECT object_id, {columns} FROM crm_sync_inbound"))}

        assert stored("state, amount") == {"d-1": ("closed_won", 700.0), "d-2": ("closed_won", 1234.5678901234567),
                            "d-3": ("negotiation", None), "a-1": ("sales_activity", None)}
        config = _config("crm_sync", engine)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "crm_sync_0005")
        assert stored("state") == {o: (s,) for _, o, s in rows}
    finally:
        engine.dispose()
