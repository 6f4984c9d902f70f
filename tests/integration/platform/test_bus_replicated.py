"""The publisher waits for a replica (NURTURE_REDIS_WAIT_REPLICAS; nurture.bus.Publisher) on real
redis-server processes, a master and its replica: with the replica stopped, a publish raises
NotReplicated (its caller, scoring's outbox, keeps the rows and publishes them again), and once the
replica follows again a publish returns only when the replica holds the entries. The same on a Redis
Cluster of one master and its replica, whose client keeps several connections to the master: WAIT
counts only what its own connection wrote (nurture.redisconn.execute_replicated), for the bus and for
journeys' timer arms."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster

from cli.rediscluster import form, node_argv
from nurture.bus import Publisher, stream_key
from nurture.redisconn import NotReplicated, run_script, shard_of
from services.journeys.timers import Arm, TimerStore
from tests.bus_messages import bus_message
from tests.conftest import answers, cluster_port, redis_server_binary
from tests.redis_replicas import master_and_replica, stop_servers

pytestmark = pytest.mark.anyio
SHARDS = 4


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[int, int, subprocess.Popen[bytes]]]:
    with master_and_replica(tmp_path) as servers:
        yield servers


async def test_a_publish_returns_once_a_replica_holds_the_entries_and_raises_while_none_does(
        pair: tuple[int, int, subprocess.Popen[bytes]]) -> None:
    master_port, replica_port, replica = pair
    client = aioredis.Redis(port=master_port)
    follower = redis.Redis(port=replica_port)
    publisher = Publisher(client, SHARDS, wait_replicas=1)
    key = stream_key(shard_of("lead-w", SHARDS))
    try:
        await publisher.publish([bus_message("w1", "lead-w", "x")])
        assert follower.xlen(key) == 1  # on the replica when the publish returned, not merely soon after
        os.kill(replica.pid, signal.SIGSTOP)  # the replica stops following (as if cut off)
        with pytest.raises(NotReplicated, match="0 of 1 replicas"):
            await publisher.publish([bus_message("w2", "lead-w", "x")])
        os.kill(replica.pid, signal.SIGCONT)
        await publisher.publish([bus_message("w3", "lead-w", "x")])
        assert follower.xlen(key) == 3  # w2 was appended too: the caller publishes it again, consumers drop repeats
    finally:
        await client.aclose()
        follower.close()


@pytest.fixture
def cluster_pair(tmp_path: Path) -> Iterator[tuple[str, int, subprocess.Popen[bytes]]]:
    """A Redis Cluster of one master and its replica (`form` as `nurture up --redis-cluster 1
    --redis-cluster-replicas 1` does): its URL, the replica's port and process."""
    ports = [cluster_port(), cluster_port()]
    procs = []
    for port in ports:
        (tmp_path / str(port)).mkdir()
        procs.append(subprocess.Popen(node_argv(redis_server_binary(), port, tmp_path / str(port)),
                                      stdout=subprocess.DEVNULL))
    try:
        for port in ports:
            assert answers(redis.Redis(port=port))
        form(ports, replicas=1)  # returns once the replica's link to its master is up
        replica_port = next(p for p in ports if redis.Redis(port=p).info("replication")["role"] == "slave")
        yield f"redis://127.0.0.1:{ports[0]}/0", replica_port, procs[ports.index(replica_port)]
    finally:
        stop_servers(procs)


async def test_on_a_cluster_a_stopped_replica_fails_the_publish_and_the_arm_whatever_connection_waits(
        cluster_pair: tuple[str, int, subprocess.Popen[bytes]]) -> None:
    url, replica_port, replica = cluster_pair
    client = aiocluster.RedisCluster.from_url(url)
    follower = redis.Redis(port=replica_port, single_connection_client=True)
    follower.execute_command("READONLY")  # a cluster replica answers reads of its master's slots
    publisher = Publisher(client, SHARDS, wait_replicas=1)
    timers = TimerStore(client, 16, wait_replicas=1)
    key = stream_key(shard_of("lead-w", SHARDS))
    try:
        # A busy process's client holds several connections to the master, each with writes of its own
        # the replica has acknowledged; the cluster client hands out the oldest free one next.
        await asyncio.gather(*(client.set(f"warm{{w}}:{i}", i) for i in range(6)))
        await publisher.publish([bus_message("w1", "lead-w", "x")])
        assert follower.xlen(key) == 1
        os.kill(replica.pid, signal.SIGSTOP)
        # A WAIT on any connection but the writing one would answer 1 at once: these would return.
        with pytest.raises(NotReplicated, match="0 of 1 replicas"):
            await publisher.publish([bus_message("w2", "lead-w", "x")])
        with pytest.raises(NotReplicated, match="0 of 1 replicas"):
            await timers.schedule([Arm("lead-w", "step", 1, datetime(2026, 1, 1, tzinfo=UTC))])
        # A script's writes (the gateway's collect rate limiter appends its stream so), on its first run
        # (NOSCRIPT, loaded, run again) and after.
        for _ in range(2):
            with pytest.raises(NotReplicated, match="0 of 1 replicas"):
                await run_script(client, "return redis.call('XADD', KEYS[1], '*', 'm', ARGV[1])", [([key], [b"s"])], 1)
        os.kill(replica.pid, signal.SIGCONT)
        await publisher.publish([bus_message("w3", "lead-w", "x")])
        assert follower.xlen(key) == 5  # w2 and the script's two entries were appended too
    finally:
        await client.aclose()
        follower.close()
