"""Messaging's bus handler works a batch in a few transactions, whatever its size, and keeps what the
one-message-at-a-time handler promised: the first reason per lead, a lead's ad-platform removals
queued once, and the order of a lead's writes within the batch (an erasure after a suppression)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, select

from services.messaging.storage import AdSuppression
from services.messaging.tables import ads_outbox
from tests.bus_messages import bus_message
from tests.integration.messaging.conftest import InProc
from tests.integration.messaging.harness import make_lead

pytestmark = pytest.mark.anyio
AT = "2026-01-05T08:00:00Z"


def queued_removals(inproc: InProc) -> list[tuple[str, str, str]]:
    with inproc.db.session() as s:
        return sorted((r.audience, r.lead_id, r.op) for r in s.execute(select(ads_outbox)))


@pytest.fixture
def commits(inproc: InProc) -> Iterator[list[int]]:
    """The SQL transactions messaging commits from here on."""
    seen: list[int] = []

    def count(_conn: Any) -> None:
        seen.append(1)

    event.listen(inproc.db.engine, "commit", count)
    yield seen
    event.remove(inproc.db.engine, "commit", count)


async def test_a_batch_of_suppressions_costs_a_few_transactions_not_one_per_message(
        inproc: InProc, commits: list[int]) -> None:
    now = inproc.clock.now()
    for n in range(20):
        inproc.engine.store.audience_change("family.decision", f"c{n}", True, now)
    commits.clear()
    # Customers are kept out of ads: 20 leads, two messages each, one batch.
    await inproc.bus(*[bus_message(f"c-{n}-{k}", f"c{n}", "page_viewed", occurred_at=AT,
                                   lead=make_lead(f"c{n}", lifecycle_stage="customer"))
                       for k in range(2) for n in range(20)])
    assert len(commits) <= 3  # the inbox check, the suppressions, the inbox record
    assert inproc.engine.store.ad_suppressed([f"c{n}" for n in range(20)]) == {f"c{n}": "customer" for n in range(20)}
    assert queued_removals(inproc) == sorted(("family.decision", f"c{n}", "remove") for n in range(20))
    # Heard again (another batch, new messages): nothing more to queue.
    await inproc.bus(*[bus_message(f"c-{n}-9", f"c{n}", "page_viewed", occurred_at=AT,
                                   lead=make_lead(f"c{n}", lifecycle_stage="customer")) for n in range(20)])
    assert len(queued_removals(inproc)) == 20


async def test_the_first_reason_of_a_batch_is_kept(inproc: InProc) -> None:
    await inproc.bus(bus_message("f-1", "f1", "email_clicked", lead=make_lead("f1"), occurred_at=AT,
                                 signals=["high_engagement"]),
                     bus_message("f-2", "f1", "page_viewed", lead=make_lead("f1", lifecycle_stage="customer"),
                                 occurred_at=AT))
    assert inproc.engine.store.ad_suppressed(["f1"]) == {"f1": "highly_engaged"}


async def test_an_erasure_after_a_suppression_in_one_batch_leaves_nothing_of_the_lead(inproc: InProc) -> None:
    await inproc.bus(bus_message("z-1", "z1", "page_viewed", lead=make_lead("z1", lifecycle_stage="customer"),
                                 occurred_at=AT),
                     bus_message("z-2", "z1", "lead_erased", lead={"id": "z1", "email": "z1@example.com"},
                                 occurred_at=AT))
    assert inproc.engine.store.ad_suppressed(["z1"]) == {}


async def test_concurrent_suppressions_of_one_lead_queue_its_removals_once_without_an_error(
        inproc: InProc) -> None:
    store, now = inproc.engine.store, inproc.clock.now()
    store.audience_change("family.decision", "w1", True, now)
    store.audience_change("family.other", "w1", True, now)
    item = AdSuppression("w1", "customer", now, "hash-w1")
    results = await asyncio.gather(*(inproc.db.run(store.ad_suppress_many, [item]) for _ in range(8)))
    assert sum(len(r) for r in results) == 1
    assert queued_removals(inproc) == [("family.decision", "w1", "remove"), ("family.other", "w1", "remove")]
    assert inproc.db.counters == {}  # no transaction lost a race (no unique violation to retry)
