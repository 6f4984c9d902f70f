"""Journeys' timers on a Redis Cluster of 3 masters: every shard's due set and in-flight set share a hash
tag (one slot, so the claim script runs there), the shards spread over the nodes; due timers of every
shard are claimed, acknowledged, counted; what a killed process had claimed fires again after a restart
(a new client, whose nodes have never seen the scripts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio.cluster as aiocluster
from redis.cluster import key_slot

from nurture import redisconn
from nurture.settings import Settings
from services.journeys.timers import Arm, TimerStore, inflight_key, timer_key

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]
SHARDS = 16
DUE = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def one_lead_per_shard(store: TimerStore) -> list[str]:
    found: dict[int, str] = {}
    i = 0
    while len(found) < SHARDS:
        found.setdefault(store.shard(f"lead-{i}"), f"lead-{i}")
        i += 1
    return [found[s] for s in range(SHARDS)]


async def test_a_shards_sets_share_a_slot_and_the_shards_spread_over_the_nodes(cluster_settings: Settings) -> None:
    client = redisconn.connect(cluster_settings)
    assert isinstance(client, aiocluster.RedisCluster)
    await client.initialize()
    for shard in range(SHARDS):
        assert key_slot(timer_key(shard).encode()) == key_slot(inflight_key(shard).encode())
    assert len({client.get_node_from_key(timer_key(s)).port for s in range(SHARDS)}) == 3
    await client.aclose()


async def test_due_timers_of_every_shard_are_claimed_acknowledged_and_counted(cluster_settings: Settings) -> None:
    client = redisconn.connect(cluster_settings)
    store = TimerStore(client, SHARDS)
    leads = one_lead_per_shard(store)
    await store.schedule([Arm(lead, "family", 1, DUE + timedelta(minutes=i)) for i, lead in enumerate(leads)]
                         + [Arm(leads[0], "family", "s", DUE + timedelta(days=2))])
    assert await store.pending() == SHARDS + 1
    assert await store.next_due() == DUE
    assert await store.due_count(DUE + timedelta(minutes=7)) == 8
    assert await store.claim(DUE - timedelta(milliseconds=1)) == []
    claimed = await store.claim(DUE + timedelta(hours=1))
    assert sorted(t.lead_id for t in claimed) == sorted(leads)
    assert {t.shard for t in claimed} == set(range(SHARDS))
    assert await store.pending() == 1 and await store.next_due() == DUE + timedelta(days=2)
    assert await store.claim(DUE + timedelta(hours=1)) == []  # in flight under a lease: not again
    await store.ack(claimed)
    assert sum([await client.zcard(inflight_key(s)) for s in range(SHARDS)]) == 0
    await store.cancel([(leads[0], "family", "s")])
    assert await store.pending() == 0 and await store.next_due() is None
    await client.aclose()


async def test_timers_a_killed_process_had_claimed_fire_again_after_a_restart(cluster_settings: Settings) -> None:
    client = redisconn.connect(cluster_settings)
    store = TimerStore(client, SHARDS)
    leads = one_lead_per_shard(store)
    await store.schedule([Arm(lead, "family", 3, DUE) for lead in leads])
    assert len(await store.claim(DUE)) == SHARDS  # then the process dies before its commit and ack
    await client.aclose()
    redisconn.connect_sync(cluster_settings).script_flush()  # and the nodes forget the scripts: loaded again
    restarted = redisconn.connect(cluster_settings)
    again = TimerStore(restarted, SHARDS)
    assert await again.claim(DUE) == []  # still leased
    assert await again.recover() == SHARDS
    fired = await again.claim(DUE)
    assert sorted((t.lead_id, t.ekey, t.token) for t in fired) == sorted((lead, "family", "3") for lead in leads)
    await again.ack(fired)
    assert await again.pending() == 0
    await restarted.aclose()
