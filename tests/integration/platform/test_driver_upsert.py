"""DriverWrites.upsert: the same rows as SQLAlchemy's ON CONFLICT would leave, on SQLite and PostgreSQL;
DriverWrites.select narrowed by a second IN list, across statement chunks."""

from __future__ import annotations

from datetime import date

from sqlalchemy import Column, Date, Integer, MetaData, String, Table, select

from nurture.db import DriverWrites, make_engine
from nurture.settings import Settings

meta = MetaData()
cells = Table("t_driver_upsert", meta, Column("day", Date, primary_key=True), Column("k", String(8), primary_key=True),
              Column("n", Integer, nullable=False), Column("label", String(8), nullable=False))
keys_only = Table("t_driver_upsert_keys", meta, Column("k", String(8), primary_key=True))
pairs = Table("t_driver_select_pairs", meta, Column("a", String(8), primary_key=True),
              Column("b", String(8), primary_key=True))


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


def test_select_narrowed_by_a_second_list_reads_just_those_rows_across_chunks(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url_for("platform"))
    meta.create_all(engine)
    writes = DriverWrites(engine)
    rows = [(f"a{i % 3}", f"b{i:04d}") for i in range(2500)]  # more b values than one statement takes
    try:
        with writes.begin() as conn:
            writes.insert(conn, pairs, ("a", "b"), rows)
        with writes.begin() as conn:
            wanted = ["b0000", "b0001", "b1500", "b2499", "b9999"] + [f"b{i:04d}" for i in range(1000, 2200, 7)]
            found = writes.select(conn, pairs, ("a", "b"), "a", ["a0", "a1", "zz"], also=("b", wanted))
            expected = sorted((a, b) for a, b in rows if a in ("a0", "a1") and b in wanted)
            assert sorted((r["a"], r["b"]) for r in found) == expected and expected
            assert writes.select(conn, pairs, ("a", "b"), "a", ["a0"], also=("b", [])) == []
            assert len(writes.select(conn, pairs, ("a", "b"), "a", ["a0", "a2"])) == 1667
    finally:
        meta.drop_all(engine)
        engine.dispose()
