"""Two crm_sync replicas share one push queue: a job claimed by one is never claimed by the other, even
while the first claim's transaction is still open (PostgreSQL's SKIP LOCKED; SQLite has one writer);
a replica that restarts takes back its own claims at once, and another replica's only when their lease
has run out (its replica died and did not come back)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from nurture.db import Database, open_database
from nurture.settings import Settings
from services.crm_sync import storage as st
from services.crm_sync.server import MIGRATIONS
from services.crm_sync.tables import outbox

NOW = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = open_database(settings, service="crm_sync", migrations_dir=MIGRATIONS)
    with database.session() as s:
        for n in range(10):
            st.enqueue(s, f"l{n}", "contact", NOW)
    yield database
    database.close()


def claim(db: Database, replica: str, limit: int, *, hold: threading.Event | None = None,
          claimed: threading.Event | None = None) -> list[int]:
    with db.session() as s:
        ids = [j.id for j in st.due_jobs(s, NOW, limit)]
        st.mark_running(s, ids, replica, NOW)
        if claimed is not None and hold is not None:
            claimed.set()
            assert hold.wait(10)
    return ids


def states(db: Database) -> dict[int, tuple[str, str | None]]:
    with db.session() as s:
        return {r.id: (r.status, r.claimed_by) for r in s.execute(select(outbox))}


def test_two_replicas_never_claim_one_job(db: Database, settings: Settings) -> None:
    hold, claimed = threading.Event(), threading.Event()
    first: list[int] = []
    a = threading.Thread(target=lambda: first.extend(claim(db, "a", 4, hold=hold, claimed=claimed)))
    a.start()
    assert claimed.wait(10)
    if settings.database_url:  # PostgreSQL: b claims past a's open transaction, at once
        second = claim(db, "b", 100)
        hold.set()
    else:
        # SQLite: replicas are a PostgreSQL deployment; on SQLite a service is one process whose writes
        # go through one thread, so b's claim comes after a's commit and finds a's jobs running.
        hold.set()
        a.join(10)
        second = claim(db, "b", 100)
    a.join(10)
    assert len(first) == 4 and len(second) == 6
    assert not set(first) & set(second)
    assert {job: who for job, (_, who) in states(db).items()} == {j: "a" for j in first} | {j: "b" for j in second}


def test_a_restarted_replica_takes_back_its_own_claims_and_only_stale_others(db: Database) -> None:
    mine, theirs = claim(db, "a", 3), claim(db, "b", 3)
    with db.session() as s:
        st.requeue_running(s, "a", NOW + timedelta(minutes=1))
    after = states(db)
    assert all(after[j] == ("pending", None) for j in mine)
    assert all(after[j] == ("running", "b") for j in theirs)  # b is alive and performing them
    with db.session() as s:
        st.requeue_running(s, "a", NOW + st.CLAIM_LEASE + timedelta(seconds=1))
    assert all(states(db)[j] == ("pending", None) for j in theirs)  # b's lease ran out
    with db.session() as s:
        attempts = dict(s.execute(select(outbox.c.id, outbox.c.attempts)).all())
    assert all(attempts[j] == 1 for j in mine + theirs)  # each interrupted push counts as an attempt
