"""DriverWrites.upsert: the same rows as SQLAlchemy's ON CONFLICT would leave, on SQLite and PostgreSQL;
DriverWrites.insert skipping existing keys; DriverWrites.select narrowed by a second IN list, across
statement chunks; converted values (days and flags converted once per value and statement) are those
SQLAlchemy writes, row by row."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Boolean, Column, Date, DateTime, Integer, MetaData, String, Table, event, select
from sqlalchemy.engine import Engine

from nurture.db import DriverWrites, make_engine
from nurture.settings import Settings

meta = MetaData()
cells = Table("t_driver_upsert", meta, Column("day", Date, primary_key=True), Column("k", String(8), primary_key=True),
              Column("n", Integer, nullable=False), Column("label", String(8), nullable=False))
keys_only = Table("t_driver_upsert_keys", meta, Column("k", String(8), primary_key=True))
pairs = Table("t_driver_select_pairs", meta, Column("a", String(8), primary_key=True),
              Column("b", String(8), primary_key=True))
typed = Table("t_driver_typed", meta, Column("id", Integer, primary_key=True, autoincrement=False),
              Column("day", Date, nullable=True), Column("prev", Date, nullable=False),
              Column("flag", Boolean, nullable=True), Column("at", DateTime(timezone=True), nullable=False))
twin = Table("t_driver_typed_twin", meta, *(c.copy() for c in typed.columns))


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    """The platform database with this file's tables, dropped after the test."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url_for("platform"))
    meta.create_all(engine)
    try:
        yield engine
    finally:
        meta.drop_all(engine)
        engine.dispose()


def test_upsert_adds_replaces_or_ignores(engine: Engine) -> None:
    writes = DriverWrites(engine)
    d = date(2026, 3, 2)
    cols = ("day", "k", "n", "label")
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


def test_select_narrowed_by_a_second_list_reads_just_those_rows_across_chunks(engine: Engine) -> None:
    writes = DriverWrites(engine)
    rows = [(f"a{i % 3}", f"b{i:04d}") for i in range(2500)]  # more b values than one statement takes
    with writes.begin() as conn:
        writes.insert(conn, pairs, ("a", "b"), rows)
    with writes.begin() as conn:
        wanted = ["b0000", "b0001", "b1500", "b2499", "b9999"] + [f"b{i:04d}" for i in range(1000, 2200, 7)]
        found = writes.select(conn, pairs, ("a", "b"), "a", ["a0", "a1", "zz"], also=("b", wanted))
        expected = sorted((a, b) for a, b in rows if a in ("a0", "a1") and b in wanted)
        assert sorted((r["a"], r["b"]) for r in found) == expected and expected
        assert writes.select(conn, pairs, ("a", "b"), "a", ["a0"], also=("b", [])) == []
        assert len(writes.select(conn, pairs, ("a", "b"), "a", ["a0", "a2"])) == 1667


def test_each_rows_days_flags_and_times_are_written_as_sqlalchemy_writes_them(engine: Engine) -> None:
    """A statement's rows repeat a few days and flags (converted once per value) among distinct times."""
    writes = DriverWrites(engine)
    start = datetime(2026, 3, 1, 23, 59, 59, 999999, tzinfo=UTC)
    days = [date(2026, 3, 1), date(2026, 3, 2), date(2026, 2, 28), None]
    rows = [(i, days[i % 4], days[(i + 1) % 3], [True, False, None, 1, 0][i % 5], start + timedelta(seconds=i))
            for i in range(300)]
    cols = ("id", "day", "prev", "flag", "at")
    with writes.begin() as conn:
        writes.upsert(conn, typed, cols, rows, keys=("id",))
        conn.execute(twin.insert(), [dict(zip(cols, r, strict=True)) for r in rows])
    with engine.connect() as conn:
        ours = conn.execute(select(typed).order_by(typed.c.id)).all()
        theirs = conn.execute(select(twin).order_by(twin.c.id)).all()
        assert [tuple(r) for r in ours] == [tuple(r) for r in theirs]
        assert [(r.day, r.prev, r.flag) for r in ours[:5]] == [
            (date(2026, 3, 1), date(2026, 3, 2), True), (date(2026, 3, 2), date(2026, 2, 28), False),
            (date(2026, 2, 28), date(2026, 3, 1), None), (None, date(2026, 3, 2), True),
            (date(2026, 3, 1), date(2026, 2, 28), False)]
        assert {r.at.replace(tzinfo=UTC) if r.at.tzinfo is None else r.at for r in ours} == {r[4] for r in rows}


def test_one_call_with_a_key_twice_and_more_rows_than_a_statement_leaves_what_upserting_in_turn_does(
        engine: Engine) -> None:
    """Rows sharing a key in one call add up (and the last one's other values stay), as they would one
    after another, across more rows than one statement takes (PostgreSQL sends multi-row statements)."""
    writes = DriverWrites(engine)
    d = date(2026, 3, 2)
    cols = ("day", "k", "n", "label")
    rows = [(d, f"k{i % 700:04d}", i, f"l{i}") for i in range(3100)]  # 700 keys, each in a statement twice
    with writes.begin() as conn:
        writes.upsert(conn, cells, cols, [(d, "k0000", 1000, "first")], keys=("day", "k"), add=("n",))
        writes.upsert(conn, cells, cols, rows, keys=("day", "k"), add=("n",))
        writes.upsert(conn, keys_only, ("k",), [(f"k{i % 3}",) for i in range(2500)], keys=("k",))
        writes.upsert(conn, cells, cols, [(d, "k0001", 5, "x"), (d, "k0001", 6, "y"), (d, "new", 1, "z"),
                                          (d, "new", 2, "w")], keys=("day", "k"), ignore=True)
    expected: dict[str, tuple[int, str]] = {"k0000": (1000, "first")}
    for _, k, n, label in rows:
        before = expected.get(k, (0, ""))
        expected[k] = (before[0] + n, label)
    expected["new"] = (1, "z")
    with engine.connect() as conn:
        found = {r.k: (r.n, r.label) for r in conn.execute(select(cells))}
        assert found == expected
        assert found["k0000"] == (1000 + 0 + 700 + 1400 + 2100 + 2800, "l2800")
        assert sorted(r.k for r in conn.execute(select(keys_only))) == ["k0", "k1", "k2"]


def test_on_postgresql_a_call_of_many_rows_is_one_statement_of_arrays(engine: Engine) -> None:
    """PostgreSQL: an upsert or insert of many rows is one `INSERT ... SELECT FROM unnest(arrays)` on the
    driver's cursor, not an executemany (psycopg sends and answers each row of one as a statement of its own,
    in Python: over half of analytics' fold)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's statements only")
    import psycopg

    sent: list[tuple[str, str]] = []

    class Recording(psycopg.Cursor[Any]):
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            sent.append(("execute", str(query)))
            return super().execute(query, params, **kwargs)

        def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
            sent.append(("executemany", str(query)))
            super().executemany(query, params_seq, **kwargs)

    def checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        dbapi_connection.cursor_factory = Recording

    event.listen(engine, "checkout", checkout)
    writes = DriverWrites(engine)
    d = date(2026, 3, 2)
    with writes.begin() as conn:
        sent.clear()
        writes.upsert(conn, cells, ("day", "k", "n", "label"), [(d, f"k{i % 700}", i, "x") for i in range(3100)],
                      keys=("day", "k"), add=("n",))
        writes.insert(conn, pairs, ("a", "b"), [("a", f"b{i}") for i in range(2500)])
        mine = list(sent)
    event.remove(engine, "checkout", checkout)
    assert [kind for kind, _ in mine] == ["execute", "execute"], mine
    assert all("unnest(" in sql for _, sql in mine), mine
    with engine.connect() as conn:
        assert len(conn.execute(select(cells)).all()) == 700 and len(conn.execute(select(pairs)).all()) == 2500


def test_insert_skipping_existing_keys_returns_just_the_new_rows(engine: Engine) -> None:
    """`insert(..., skip_existing=keys)`: a row whose key exists is left as it was and out of what is
    returned (how a writer learns that a concurrent transaction created a row first); without
    `returning` the call is refused, as its caller could not tell."""
    writes = DriverWrites(engine)
    with writes.begin() as conn:
        writes.insert(conn, keys_only, ("k",), [("b",)])
        made = writes.insert(conn, keys_only, ("k",), [("c",), ("b",), ("a",)], returning="k", skip_existing=("k",))
        assert made == ["a", "c"]
        with pytest.raises(ValueError):
            writes.insert(conn, keys_only, ("k",), [("d",)], skip_existing=("k",))
    with engine.connect() as conn:
        assert [r.k for r in conn.execute(select(keys_only).order_by(keys_only.c.k))] == ["a", "b", "c"]
