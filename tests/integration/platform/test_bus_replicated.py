"""The publisher waits for a replica (NURTURE_REDIS_WAIT_REPLICAS; nurture.bus.Publisher) on real
redis-server processes, a master and its replica: with the replica stopped, a publish raises
NotReplicated (its caller, scoring's outbox, keeps the rows and publishes them again), and once the
replica follows again a publish returns only when the replica holds the entries."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from nurture.bus import Publisher, stream_key
from nurture.redisconn import NotReplicated, shard_of
from tests.bus_messages import bus_message
from tests.conftest import answers, free_port, redis_server_binary

pytestmark = pytest.mark.anyio
SHARDS = 4


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[int, int, subprocess.Popen[bytes]]]:
    """A master and its replica (no persistence): their ports, and the replica's process."""
    master_port, replica_port = free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"]
    master = subprocess.Popen([redis_server_binary(), "--port", str(master_port), "--dir", str(tmp_path), *common],
                              stdout=subprocess.DEVNULL)
    replica = subprocess.Popen([redis_server_binary(), "--port", str(replica_port), "--dir", str(tmp_path), *common,
                                "--replicaof", "127.0.0.1", str(master_port)], stdout=subprocess.DEVNULL)
    try:
        assert answers(redis.Redis(port=master_port)) and answers(redis.Redis(port=replica_port))
        follower = redis.Redis(port=replica_port, decode_responses=True)
        deadline = time.monotonic() + 30
        while follower.info("replication").get("master_link_status") != "up" and time.monotonic() < deadline:
            time.sleep(0.05)
        follower.close()
        yield master_port, replica_port, replica
    finally:
        for proc in (replica, master):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            proc.wait(10)


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
