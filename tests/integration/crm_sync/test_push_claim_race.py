"""A lead change the bus consumer commits while a push pass claims the lead's pending contact push is
still pushed. The consumer queues no second push when one is pending (that one reads the lead when it
runs); on PostgreSQL a pass could claim it between the consumer's read of the queue and its commit, and
read the older lead: the CRM kept a stale contact. The consumer's read now locks the pending push (after
the lead's row), so the pass skips it until the change is committed; on SQLite the one writer thread
runs the pass's claim after the consumer's transaction."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from sqlalchemy import event, select

from nurture.api.scoring.v1 import scoring_pb2_grpc
from nurture.busmessage import BusMessage, LeadSnapshot
from nurture.clock import FixedClock
from nurture.db import Database, open_database
from nurture.settings import Settings
from services.crm_sync import domain
from services.crm_sync import storage as st
from services.crm_sync.app.core import CrmSyncCore
from services.crm_sync.clients import JourneysLookup
from services.crm_sync.connector import HubSpotConnector
from services.crm_sync.server import MIGRATIONS
from services.crm_sync.tables import outbox

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
LEAD = "lead-raced"


@pytest.fixture
async def core(settings: Settings) -> AsyncIterator[CrmSyncCore]:
    """The real crm_sync core on the test's database. Scoring, journeys and the CRM are never called on
    the paths this test drives (a lead change without tasks, a claim): their addresses lead nowhere."""
    db = open_database(settings, service="crm_sync", migrations_dir=MIGRATIONS)
    scoring = grpc.aio.insecure_channel("127.0.0.1:9")
    connector = HubSpotConnector("http://127.0.0.1:9")
    yield CrmSyncCore(db=db, clock=FixedClock(NOW), cfg=domain.load_config(), connector=connector,
                      scoring=scoring_pb2_grpc.ScoringStub(scoring), journeys=JourneysLookup(None),
                      crm_name="test-crm", virtual=True)
    await connector.close()
    await scoring.close()
    db.close()


def _change(version: int) -> BusMessage:
    return BusMessage(id=f"m{version}", lead_id=LEAD, type="lead_updated", occurred_at=NOW.isoformat(),
                      lead=LeadSnapshot(id=LEAD, email="raced@example.com", first_name=f"Name{version}",
                                        score=10 * version, lifecycle_stage="lead", version=version))


def _pending_contact_pushes(db: Database) -> list[int]:
    with db.session() as s:
        return list(s.scalars(select(outbox.c.id).where(outbox.c.lead_id == LEAD, outbox.c.op == "contact",
                                                         outbox.c.status == "pending")))


async def test_a_change_committed_while_its_pending_push_is_claimed_is_still_pushed(core: CrmSyncCore) -> None:
    db = core.db
    await core.handle_messages([_change(1)])
    assert len(_pending_contact_pushes(db)) == 1  # version 1's push, not yet performed

    # Stop the consumer's next transaction right after it read the queue's pending pushes.
    armed, reached, go = threading.Event(), threading.Event(), threading.Event()

    def hold(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if armed.is_set() and statement.lstrip().upper().startswith("SELECT") and "crm_sync_outbox" in statement:
            armed.clear()
            reached.set()
            assert go.wait(20)

    event.listen(db.engine, "after_cursor_execute", hold)
    try:
        armed.set()
        consumer = asyncio.create_task(core.handle_messages([_change(2)]))
        assert await asyncio.to_thread(reached.wait, 20), "the consumer never read the push queue"
        # A pass claims due pushes as the service does (its writer executor: on PostgreSQL beside the
        # consumer's open transaction, on SQLite behind it) and reads the leads of its contact pushes.
        claim = asyncio.ensure_future(core.sql(lambda s: core._claim(s, NOW, 400)))
        if db.is_sqlite:
            go.set()
        claimed = await claim
        seen = await core.read(lambda s: st.get_leads(s, [j.lead_id for j in claimed if j.op == "contact"]))
        go.set()
        await consumer
    finally:
        go.set()
        event.remove(db.engine, "after_cursor_execute", hold)

    # Version 2 reaches the CRM: the pass read it, or a push still pending will.
    read_versions = {row.version for row in seen.values()}
    assert 2 in read_versions or _pending_contact_pushes(db), (
        f"the pass pushed version(s) {sorted(read_versions)} and no push is left for version 2")
    with db.session() as s:
        assert st.get_lead(s, LEAD) is not None and st.get_lead(s, LEAD).version == 2  # type: ignore[union-attr]


async def test_a_lead_erased_and_made_again_in_one_batch_still_gets_its_contact_push(core: CrmSyncCore) -> None:
    """The batch's "a contact push is pending" set follows an erasure inside the batch: the erasure deletes
    the pending push, so the lead made again after it (the same id signing up again) queues a new one,
    or the CRM would never hear of it."""
    erased = BusMessage(id="m-erased", lead_id=LEAD, type="lead_erased", occurred_at=NOW.isoformat())
    await core.handle_messages([_change(1), erased, _change(1)])
    assert len(_pending_contact_pushes(db := core.db)) == 1
    with db.session() as s:
        assert st.get_leads(s, [LEAD])[LEAD].snapshot["first_name"] == "Name1"
