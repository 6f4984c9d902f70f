"""Two messaging replicas share one queue of due messages: a message one replica has claimed is not
taken by the other, even while the first claim's transaction is open (PostgreSQL's SKIP LOCKED) and
after it (the claim names its replica); a restarted replica takes back its own claims at once, and a dead
replica's only when the lease has run out. One replica alone sees exactly the old queue."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from nurture.db import Database, open_database
from nurture.settings import Settings
from services.messaging.server import MIGRATIONS
from services.messaging.storage import CLAIM_LEASE, LogLine, Message, Store

NOW = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = open_database(settings, service="messaging", migrations_dir=MIGRATIONS)
    naive = NOW.replace(tzinfo=None)
    Store(database.session).insert_messages([(Message(
        id=f"m{n:02d}", dedupe_key=f"k{n}", lead_id=f"l{n}", journey="", journey_version=0,
        step="", channel="email", template="welcome", category="nurture", variant="",
        context_json="{}", subject="", email_hash="", status="scheduled", reason="",
        attempts=0, due_at=naive, created_at=naive, updated_at=naive,
    ), LogLine(f"m{n:02d}", f"l{n}", "queued", "queued")) for n in range(10)])
    yield database
    database.close()


def ids(rows: list[Message]) -> set[str]:
    return {r.id for r in rows}


def test_two_replicas_never_take_one_message(db: Database, settings: Settings) -> None:
    store = Store(db.session)
    if settings.database_url:
        hold, claimed = threading.Event(), threading.Event()

        @contextmanager
        def held() -> Iterator[Session]:
            """a's claim transaction, kept open until b has claimed."""
            with db.session() as s:
                yield s
                claimed.set()
                assert hold.wait(10)

        first: list[Message] = []
        a = threading.Thread(target=lambda: first.extend(Store(held).due_messages(NOW, 4, "a")))
        a.start()
        assert claimed.wait(10)
        second = store.due_messages(NOW, 100, "b")  # past a's locked rows, at once
        hold.set()
        a.join(10)
    else:  # SQLite: one writer, so b claims after a's commit
        first = store.due_messages(NOW, 4, "a")
        second = store.due_messages(NOW, 100, "b")
    assert len(first) == 4 and len(second) == 6 and not ids(first) & ids(second)
    # Claimed but not yet sent: each replica finds again only its own.
    assert ids(store.due_messages(NOW, 100, "a")) == ids(first)
    assert ids(store.due_messages(NOW, 100, "b")) == ids(second)


def test_a_restarted_replica_takes_its_own_and_a_dead_ones_after_the_lease(db: Database) -> None:
    store = Store(db.session)
    mine, theirs = ids(store.due_messages(NOW, 3, "a")), ids(store.due_messages(NOW, 3, "b"))
    soon = NOW + timedelta(minutes=1)
    taken = ids(store.due_messages(soon, 100, "a"))  # a restarted: its own claims and the unclaimed
    assert mine <= taken and taken.isdisjoint(theirs) and len(taken) == 7
    later = NOW + CLAIM_LEASE + timedelta(minutes=2)
    assert ids(store.due_messages(later, 100, "a")) == mine | theirs | taken  # b never came back
