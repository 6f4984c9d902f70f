"""The timer store on a real Redis: due at its time and not before, a claim takes the timer out of the
due set into flight, a claimed timer is not claimed again while its lease runs and is after it, and
`recover` (start-up) fires again what a dead process left in flight."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from services.journeys import timers as timers_module
from services.journeys.timers import LEASE_S, TimerStore, inflight_key, member, timer_key

pytestmark = pytest.mark.anyio

DUE = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
WALL = 1_800_000_000.0


@pytest.fixture
async def store(redis_url: str, monkeypatch: pytest.MonkeyPatch):
    client = aioredis.Redis.from_url(redis_url)
    wall = {"now": WALL}
    monkeypatch.setattr(timers_module.time, "time", lambda: wall["now"])
    ts = TimerStore(client, shards=4)
    ts.wall = wall  # type: ignore[attr-defined]
    ts.client = client  # type: ignore[attr-defined]
    yield ts
    await client.aclose()


async def test_a_timer_is_due_at_its_time_not_a_millisecond_before(store: TimerStore) -> None:
    await store.schedule([("l-1", "family", 3, DUE)])
    assert await store.pending() == 1
    assert await store.next_due() == DUE
    assert await store.claim(DUE - timedelta(milliseconds=1)) == []
    [timer] = await store.claim(DUE)
    assert (timer.lead_id, timer.ekey, timer.token, timer.side) == ("l-1", "family", "3", False)
    assert timer.shard == store.shard("l-1")


async def test_a_claim_moves_the_timer_from_the_due_set_into_flight(store: TimerStore) -> None:
    await store.schedule([("l-1", "family", 3, DUE), ("l-1", "family", "s", DUE + timedelta(days=1))])
    shard = store.shard("l-1")
    client = store.client  # type: ignore[attr-defined]
    [timer] = await store.claim(DUE + timedelta(hours=1))
    assert timer.side is False
    assert await client.zrange(timer_key(shard), 0, -1) == [member("l-1", "family", "s").encode()]
    assert await client.zrange(inflight_key(shard), 0, -1, withscores=True) == [
        (member("l-1", "family", 3).encode(), (WALL + LEASE_S) * 1000)]
    assert await store.pending() == 1 and await store.next_due() == DUE + timedelta(days=1)
    await store.ack([timer])
    assert await client.zcard(inflight_key(shard)) == 0


async def test_a_claimed_timer_is_not_claimed_again_before_its_lease_ends_and_is_after(store: TimerStore) -> None:
    await store.schedule([("l-2", "webinar#w1", 7, DUE)])
    wall = store.wall  # type: ignore[attr-defined]
    [first] = await store.claim(DUE)
    # Still leased (the process that claimed it may be committing): nobody else takes it.
    wall["now"] = WALL + LEASE_S - 0.001
    assert await store.claim(DUE + timedelta(days=1)) == []
    # The lease ran out (the claimer died before its ack): it fires again, with a new lease.
    wall["now"] = WALL + LEASE_S
    [again] = await store.claim(DUE + timedelta(days=1))
    assert again.member == first.member
    assert await store.claim(DUE + timedelta(days=1)) == []
    wall["now"] = WALL + 2 * LEASE_S
    assert [t.member for t in await store.claim(DUE)] == [first.member]
    await store.ack([again])
    wall["now"] = WALL + 10 * LEASE_S
    assert await store.claim(DUE + timedelta(days=1)) == []


async def test_claim_takes_at_most_the_limit_per_shard_oldest_first(store: TimerStore) -> None:
    leads = [f"l-{i}" for i in range(40)]
    shard = store.shard(leads[0])
    same = [lead for lead in leads if store.shard(lead) == shard][:3]
    await store.schedule([(lead, "family", 1, DUE + timedelta(minutes=i)) for i, lead in enumerate(same)])
    got = await store.claim(DUE + timedelta(hours=1), limit=2)
    assert [t.lead_id for t in got] == same[:2]
    assert [t.lead_id for t in await store.claim(DUE + timedelta(hours=1), limit=2)] == same[2:]


async def test_recover_fires_again_what_was_left_in_flight(store: TimerStore) -> None:
    await store.schedule([("l-3", "family", 2, DUE), ("l-4", "family", 5, DUE + timedelta(days=3))])
    claimed = await store.claim(DUE)
    assert [t.lead_id for t in claimed] == ["l-3"]
    assert await store.recover() == 1
    # Due at once (score 0), whatever the clock says, and its lease is gone.
    assert [t.lead_id for t in await store.claim(DUE - timedelta(days=365))] == ["l-3"]
    await store.cancel([("l-4", "family", 5)])
    assert await store.pending() == 0 and await store.next_due() is None


async def test_a_lead_id_with_the_separator_survives_the_round_trip(store: TimerStore) -> None:
    # Members are <lead>|<ekey>|<token>: the lead id is whatever is left of the last two separators
    # (lead ids come from outside; journey keys and tokens never hold a "|").
    await store.schedule([("crm|42|x", "webinar#w1", "s", DUE)])
    [timer] = await store.claim(DUE)
    assert (timer.lead_id, timer.ekey, timer.token, timer.side) == ("crm|42|x", "webinar#w1", "s", True)


async def test_recover_counts_what_it_moved_in_every_shard(store: TimerStore) -> None:
    leads = [f"r-{i}" for i in range(40)]
    by_shard: dict[int, str] = {}
    for lead_id in leads:
        by_shard.setdefault(store.shard(lead_id), lead_id)
    assert len(by_shard) >= 3
    await store.schedule([(lead_id, "family", 1, DUE) for lead_id in by_shard.values()])
    assert len(await store.claim(DUE)) == len(by_shard)
    assert await store.recover() == len(by_shard)
    assert await store.recover() == 0
