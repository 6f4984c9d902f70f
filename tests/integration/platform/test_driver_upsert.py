"""DriverWrites.upsert: the same rows as SQLAlchemy's ON CONFLICT would leave, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date

from sqlalchemy import Column, Date, Integer, MetaData, String, Table, select

from nurture.db import DriverWrites, make_engine
from nurture.settings import Settings

meta = MetaData()
cells = Table("t_driver_upsert", meta, Column("day", Date, primary_key=True), Column("k", String(8), primary_key=True),
              Column("n", Integer, nullable=False), Column("label", String(8), nullable=False))
keys_only = Table("t_driver_upsert_keys", meta, Column("k", String(8), primary_key=True))


def test_upsert_adds_replaces_or_ignores(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url_for("platform"))
    meta.create_all(engine)
    writes = DriverWrites(engine)
    d = date(2026, 3, 2)
    cols = ("day", "k", "n", "label")
    try:
        with writes.begin() as conn:
            writes.upsert(conn, cells, cols, [(d, "a", 1, "x"), (d, "b", 2, "y")], keys=("day", "k"), add=("n",))
            writes.upsert(conn, cells, cols, [(d, "a", 5, "z")], keys=("day", "k"), add=("n",))
            writes.upsert(conn, cells, cols, [(d, "b", 7, "w")], keys=("day", "k"), ignore=True)
            writes.upsert(conn, cells, cols, [(date(2026, 3, 3), "b", 3, "v")], keys=("day", "k"))
            writes.upsert(conn, cells, cols, [(date(2026, 3, 3), "b", 4, "u")], keys=("day", "k"))
            writes.upsert(conn, keys_only, ("k",), [("a",), ("a",)], keys=("k",))
            writes.upsert(conn, cells, cols, [], keys=("day", "k"))
        with engine.connect() as conn:
            rows = conn.execute(select(cells).order_by(cells.c.day, cells.c.k)).all()
            assert [tuple(r) for r in rows] == [(d, "a", 6, "z"), (d, "b", 2, "y"), (date(2026, 3, 3), "b", 4, "u")]
            assert conn.execute(select(keys_only)).all() == [("a",)]
    finally:
        meta.drop_all(engine)
        engine.dispose()
