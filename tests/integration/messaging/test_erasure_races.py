"""An erasure beside messaging's work in flight on another replica leaves nothing naming the lead: a send's
outcome recorded after its message was erased writes no log line or feedback, an open tracked after it
records nothing (an unsubscribe still does: consent wins), and on PostgreSQL an erasure that starts while
a send's outcome is being committed waits for it and removes what it wrote."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from nurture.db import Database, open_database
from nurture.settings import Settings
from services.messaging.server import MIGRATIONS
from services.messaging.storage import Feedback, LogLine, Message, Outcome, Store, Suppression
from services.messaging.tables import feedback, message_log, messages, tracking

NOW = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
LEAD = "lead-erased"


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = open_database(settings, service="messaging", migrations_dir=MIGRATIONS)
    naive = NOW.replace(tzinfo=None)
    Store(database.session).insert_messages([(Message(
        id=f"m{n}", dedupe_key=f"k{n}", lead_id=LEAD, journey="", journey_version=0,
        step="", channel="email", template="welcome", category="nurture", variant="",
        context_json="{}", subject="", email_hash="h", status="scheduled", reason="",
        attempts=0, due_at=naive, created_at=naive, updated_at=naive,
    ), LogLine(f"m{n}", LEAD, "queued", "queued")) for n in range(3)])
    yield database
    database.close()


def _sent(message_id: str) -> Outcome:
    return Outcome(message_id, "sent", sent_at=NOW, log=[LogLine(message_id, LEAD, "sent", "sent")],
                   feedback=[Feedback(f"sent:{message_id}", LEAD, "email_sent", {}, NOW)])


def _left(db: Database) -> dict[str, int]:
    """Rows still naming the erased lead, per table."""
    with db.session() as s:
        return {t.name: s.execute(select(func.count()).select_from(t).where(t.c.lead_id == LEAD)).scalar_one()
                for t in (messages, message_log, feedback, tracking)}


def test_an_outcome_recorded_after_the_erasure_names_nobody(db: Database) -> None:
    store = Store(db.session)
    store.erase(LEAD, "h", NOW)
    store.apply([_sent("m0"), _sent("m1")], NOW)
    assert _left(db) == {"messaging_messages": 0, "messaging_message_log": 0, "messaging_feedback": 0,
                         "messaging_tracking": 0}


def test_a_tracking_hit_after_the_erasure_records_nothing_but_an_unsubscribe_does(db: Database) -> None:
    store = Store(db.session)
    store.erase(LEAD, "h", NOW)
    opened = store.record_tracking(key="open:m0", message_id="m0", lead_id=LEAD, kind="open", url="", now=NOW,
                                   log=LogLine("m0", LEAD, "email_opened", "opened"),
                                   fb=Feedback("open:m0", LEAD, "email_opened", {}, NOW))
    assert opened is False
    assert _left(db)["messaging_tracking"] == 0 and _left(db)["messaging_feedback"] == 0
    unsubscribed = store.record_tracking(key="unsub:m0:all", message_id="m0", lead_id=LEAD, kind="unsubscribe",
                                         url="", now=NOW, log=None, fb=None,
                                         suppress=Suppression("h2", "all", "unsubscribed", "link"))
    assert unsubscribed is True
    assert store.suppression_scopes(["h2"]) == {"h2": {"all": "unsubscribed"}}


def test_an_erasure_waits_for_a_send_in_flight_and_removes_what_it_wrote(db: Database, settings: Settings) -> None:
    if not settings.database_url:
        pytest.skip("SQLite has one writer: an erasure and a send's commit cannot interleave")
    holding, release = threading.Event(), threading.Event()

    @contextmanager
    def held() -> Iterator[Session]:
        """The send's outcome transaction, written but kept open until the erasure is waiting."""
        with db.session() as s:
            yield s
            holding.set()
            assert release.wait(20)

    sender = threading.Thread(target=lambda: Store(held).apply([_sent("m0"), _sent("m2")], NOW))
    sender.start()
    assert holding.wait(20)
    eraser = threading.Thread(target=lambda: Store(db.session).erase(LEAD, "h", NOW))
    eraser.start()
    # Let the erasure run as far as it can: until a statement of it waits on a lock the send holds.
    deadline = time.monotonic() + 20
    with db.session() as s:
        while not s.execute(text("select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                                 "and datname = current_database()")).scalar_one():
            assert time.monotonic() < deadline, "the erasure never waited for the send in flight"
            time.sleep(0.02)
    release.set()
    sender.join(20)
    eraser.join(20)
    assert _left(db) == {"messaging_messages": 0, "messaging_message_log": 0, "messaging_feedback": 0,
                         "messaging_tracking": 0}
