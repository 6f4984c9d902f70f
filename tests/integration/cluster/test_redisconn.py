"""The cluster clients and what the gateway and every service keep in Redis, on a Redis Cluster of 3
masters: `NURTURE_REDIS_CLUSTER=1` gives cluster clients (async and sync); `run_script` answers a batch
whose keys live on every node, in order, loading the script on the nodes that lack it (and only running
again the calls that failed for it), and refuses a call whose keys are in two slots; the virtual clock is
one time for every process; the tracking rate limits count across slots; the console's audit log; the
session fixture is a real cluster of 3 masters with every slot served."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio.cluster as aiocluster
import redis.cluster
from redis.exceptions import RedisClusterException, ResponseError

from cli.rediscluster import SLOTS
from gateway.console import audit
from gateway.tracking.keys import SiteKey
from gateway.tracking.ratelimit import Append, Appended, RateLimits, Take
from nurture import collectstream, redisconn
from nurture.clock import VirtualClock, make_clock
from nurture.redisconn import lead_key, run_script
from nurture.settings import Settings
from services.scoring.app.collect_stream import CollectStream
from services.scoring.app.visitors import VisitorEventIn

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

# Counts its calls per key in a hash of the key's own slot: a call run twice shows.
COUNT = "return redis.call('HINCRBY', KEYS[1], 'calls', 1) * 1000 + tonumber(ARGV[1])"


def test_the_fixture_is_a_cluster_of_3_masters_serving_every_slot(cluster_settings: Settings) -> None:
    client = redisconn.connect_sync(cluster_settings)
    assert isinstance(client, redis.cluster.RedisCluster)
    masters = client.get_primaries()
    assert len(masters) == 3
    info = client.cluster_info(target_nodes=masters[0])
    assert (info["cluster_state"], int(info["cluster_slots_assigned"]), int(info["cluster_known_nodes"])) == (
        "ok", SLOTS, 3)
    client.close()


async def test_a_script_batch_over_every_node_loads_where_missing_and_runs_each_call_once(
        cluster_settings: Settings) -> None:
    client = redisconn.connect(cluster_settings)
    assert isinstance(client, aiocluster.RedisCluster)
    await client.initialize()
    leads = [f"lead-{i}" for i in range(30)]
    assert len({client.get_node_from_key(lead_key(lead, "n")).port for lead in leads}) == 3
    calls = [([lead_key(lead, "n")], [i]) for i, lead in enumerate(leads)]
    assert await run_script(client, COUNT, calls) == [1000 + i for i in range(30)]  # no node had it
    # One node forgets it (a restart, a failover): only its calls are run again after the load.
    forgetful = client.get_primaries()[1]
    with redis.Redis(host=forgetful.host, port=forgetful.port) as node:
        node.script_flush()
        assert node.script_exists(redisconn.script_sha(COUNT)) == [False]
    assert await run_script(client, COUNT, calls) == [2000 + i for i in range(30)]
    assert await run_script(client, COUNT, []) == []
    await client.aclose()


async def test_a_script_call_over_two_leads_is_refused(cluster_settings: Settings) -> None:
    client = redisconn.connect(cluster_settings)
    await client.initialize()
    a = "lead-0"
    b = next(f"lead-{i}" for i in range(1, 100)
             if client.get_node_from_key(lead_key(f"lead-{i}", "n")) != client.get_node_from_key(lead_key(a, "n")))
    with pytest.raises((RedisClusterException, ResponseError)):
        await run_script(client, COUNT, [([lead_key(a, "n"), lead_key(b, "n")], [0])])
    await client.aclose()


async def test_a_script_batch_on_one_redis_is_the_same(redis_url: str, settings: Settings) -> None:
    client = redisconn.connect(settings)
    assert not redisconn.is_cluster(client)
    calls = [([lead_key(f"lead-{i}", "n")], [i]) for i in range(5)]
    assert await run_script(client, COUNT, calls) == [1000 + i for i in range(5)]
    await client.script_flush()
    assert await run_script(client, COUNT, calls) == [2000 + i for i in range(5)]
    await client.aclose()


def test_the_virtual_clock_is_one_time_for_every_process(cluster_settings: Settings) -> None:
    first = make_clock(cluster_settings)
    second = make_clock(cluster_settings)  # another process joins: the origin stays the first one's
    assert isinstance(first, VirtualClock) and isinstance(second, VirtualClock)
    start = first.now()
    assert second.advance(3600) == start.replace(hour=start.hour + 1)
    assert first.now() == second.now()
    assert first.set(start) == second.now()  # never backwards


async def test_tracking_rate_limits_count_per_key_and_visitor_across_slots(cluster_settings: Settings) -> None:
    limits = RateLimits(redisconn.connect(cluster_settings), cluster_settings.bus_shards)
    key = SiteKey(key="pk_test", origins=frozenset({"https://site.example"}), honor_dnt=True, honor_gpc=True,
                  rate_per_s=1000, visitor_per_min=3)
    answers = [await limits.take(key, "visitor-1") for _ in range(4)]
    assert answers[:3] == [None] * 3
    refused = answers[3]
    assert refused is not None and (refused.scope, refused.limit) == ("visitor", 3)
    assert await limits.take(key, "visitor-2") is None  # another visitor's own count
    # Concurrent takes of two site keys go together: one script call per key (each key's counters in one
    # slot, the two keys on whichever nodes), and each take still gets its own exact count.
    other = SiteKey(key="pk_other_site", origins=frozenset({"https://other.example"}), honor_dnt=True,
                    honor_gpc=True, rate_per_s=1000, visitor_per_min=2)
    both = await asyncio.gather(*(limits.take(k, "visitor-3") for k in [key, other] * 4))
    assert [a is None for a in both[0::2]] == [True] * 3 + [False]
    assert [a is None for a in both[1::2]] == [True] * 2 + [False] * 2
    await limits.close()


async def test_collect_appends_and_the_stream_is_read_across_slots(cluster_settings: Settings) -> None:
    """The collect script (counters, seen ids and the stream in one slot per site key) and scoring's
    reader of every shard, on a cluster: each visitor's events come back in order, then leave the stream."""
    client = redisconn.connect(cluster_settings)
    limits = RateLimits(client, cluster_settings.bus_shards)
    keys = [SiteKey(key=f"pk_site_{n}", origins=frozenset({"https://site.example"}), honor_dnt=True, honor_gpc=True,
                    rate_per_s=1000, visitor_per_min=1000) for n in range(4)]

    def page(site: int, n: int) -> Append:
        return Append(Take.now_for(keys[site], f"visitor-{site}", 1),
                      [(f"e{n}", collectstream.encode_event("page_viewed", {"page": f"/{n}"}, None, f"e{n}"))], "")

    answers = await limits.collect([page(site, n) for n in range(3) for site in range(4)] + [page(0, 1)])
    assert answers[:-1] == [Appended(1, 0)] * 12 and answers[-1] == Appended(0, 1)  # the resend is a repeat
    stored: list[tuple[str, list[str]]] = []

    async def store(visits: list[tuple[str, list[VisitorEventIn]]]) -> None:
        stored.extend((vid, [e.client_id for e in events]) for vid, events in visits)

    reader = CollectStream(client, cluster_settings.bus_shards, store, linger=0)
    assert await reader.drain() == 12
    for site in range(4):
        assert [ids for vid, ids in stored if vid == f"visitor-{site}"] == [["e0"], ["e1"], ["e2"]]
    assert await reader.stored_up_to_now(5)
    assert sum([await client.xlen(collectstream.stream_key(s)) for s in range(cluster_settings.bus_shards)]) == 0
    await client.aclose()


async def test_the_console_audit_log(cluster_settings: Settings) -> None:
    client = redisconn.connect(cluster_settings)
    entry = await audit.record(client, role="editor", key_print="1a2b", action="retry_dead_letter",
                               service="journeys", target="bus:1-1", outcome="delivered", detail="")
    [recent] = await audit.recent(client)
    assert (recent.id, recent.service, recent.outcome) == (entry, "journeys", "delivered")
    await client.aclose()
