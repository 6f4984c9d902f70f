"""Writers of one lead's row in crm_sync (the bus consumer, an inbound contact, a push outcome, a task
request) read it, change it and write it back. Two creating the same new row: the second neither fails
nor overwrites the first; it runs again and updates the committed row. Two changing one row: the
second waits for the first (the read locks the row), so neither change is lost."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from nurture.db import Database, RetryTransaction, open_database
from nurture.settings import Settings
from services.crm_sync import storage as st
from services.crm_sync.server import MIGRATIONS

NOW = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = open_database(settings, service="crm_sync", migrations_dir=MIGRATIONS)
    yield database
    database.close()


def _write(db: Database, lead_id: str, field: str, value: str, *, read: threading.Event | None = None,
           go: threading.Event | None = None) -> None:
    """Read the lead's row (or start a new one), set one field, save: the shape of every writer."""
    with db.session() as s:
        current = st.get_lead(s, lead_id, lock=True)
        row = current or st.new_lead_row(lead_id, NOW)
        if read is not None and go is not None:
            read.set()
            assert go.wait(10)
        row.fields = {**row.fields, field: value}
        st.save_leads(s, [] if current else [row], [row] if current else [])


def test_the_second_creator_of_a_row_is_asked_to_run_again_not_failed(db: Database) -> None:
    read, go = threading.Event(), threading.Event()
    outcome: list[Any] = []

    def late() -> None:
        try:
            _write(db, "l1", "b", "2", read=read, go=go)
        except Exception as exc:  # what the late writer meets
            outcome.append(exc)

    thread = threading.Thread(target=late)
    thread.start()
    assert read.wait(10)  # the late writer found no row
    _write(db, "l1", "a", "1")  # the first creates and commits it
    go.set()
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], RetryTransaction), outcome


def test_concurrent_creators_of_rows_all_land_without_a_lost_race(db: Database) -> None:
    async def main() -> None:
        await asyncio.gather(*(db.run(_write, db, f"l{n % 3}", f"f{n}", str(n)) for n in range(12)))

    asyncio.run(main())
    with db.session() as s:
        rows = st.get_leads(s, ["l0", "l1", "l2"])
    # Every writer's field is on its lead's one row: none was lost, none failed.
    assert {lead: sorted(row.fields) for lead, row in rows.items()} == {
        f"l{k}": sorted(f"f{n}" for n in range(12) if n % 3 == k) for k in range(3)}
    assert not any(name.startswith("db.retries_exhausted") for name in db.counters)
    assert "db.retries.unique_violation" not in db.counters


def test_concurrent_assignments_take_distinct_turns_of_the_round_robin(db: Database) -> None:
    """Two transactions assigning leads of one team at once: each gets its own turn. Read-then-write
    gave both the same member on PostgreSQL (the second read the committed position while the first
    had not committed yet)."""
    with db.session() as s:
        assert st.next_round_robin(s, "canada", 3) == 0
    taken, go = threading.Event(), threading.Event()
    turns: list[int] = []

    def first() -> None:
        with db.session() as s:
            turns.append(st.next_round_robin(s, "canada", 3))
            taken.set()
            assert go.wait(10)  # holds its transaction open while the second one asks

    def second() -> None:
        with db.session() as s:
            turns.append(st.next_round_robin(s, "canada", 3))

    a = threading.Thread(target=first)
    a.start()
    assert taken.wait(10)
    b = threading.Thread(target=second)
    b.start()
    b.join(0.5)  # the second is waiting for the first's row (or its database lock on SQLite)
    go.set()
    a.join(10)
    b.join(10)
    assert sorted(turns) == [1, 2]
    with db.session() as s:
        assert st.next_round_robin(s, "canada", 3) == 0  # the fourth turn wraps round


def test_a_writer_writes_back_the_json_columns_it_left_alone_as_stored(db: Database) -> None:
    """A lead row's JSON columns are decoded when read, and a write sends a column nobody read or set
    back as the text it was (no decode, no encode): stored by `json.dumps` with its spaces, the snapshot,
    projection and journeys come back byte for byte after a writer that changed `fields` in place; the
    changed column is written, compact, and a column set without reading it is written too."""
    _write(db, "l1", "a", "1")
    spaced = {"snapshot": '{"id": "l1", "score": 7}', "projection": '{"score": 7}', "journeys": '["welcome"]'}
    with db.session() as s:
        s.execute(st.leads.update().where(st.leads.c.lead_id == "l1").values(**spaced))
    with db.session() as s:
        row = st.get_lead(s, "l1", lock=True)
        assert row is not None
        row.fields.setdefault("b", "2")  # read and changed in place
        st.save_leads(s, [], [row])
    with db.session() as s:
        stored = s.execute(st.leads.select().where(st.leads.c.lead_id == "l1")).one()._mapping
        assert {key: stored[key] for key in spaced} == spaced
        assert stored["fields"] == '{"a":"1","b":"2"}'
        row = st.get_lead(s, "l1", lock=True)
        assert row is not None
        row.journeys = ["welcome", "nurture"]  # set without reading the stored value first
        st.save_leads(s, [], [row])
    with db.session() as s:
        stored = s.execute(st.leads.select().where(st.leads.c.lead_id == "l1")).one()._mapping
        assert stored["journeys"] == '["welcome","nurture"]' and stored["snapshot"] == spaced["snapshot"]
        row = st.get_lead(s, "l1")
        assert row is not None and row.snapshot == {"id": "l1", "score": 7} and row.projection == {"score": 7}
