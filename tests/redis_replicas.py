"""Real redis-server processes in replication for the tests of waiting for replicas (WAIT): a master and
its replica, and how to end them when one may be stopped (SIGSTOP stands for a replica cut off)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.conftest import answers, free_port, redis_server_binary


@contextlib.contextmanager
def master_and_replica(workdir: Path) -> Iterator[tuple[int, int, subprocess.Popen[bytes]]]:
    """A master and its replica (no persistence), the replica's link up: their ports, and the replica's
    process."""
    master_port, replica_port = free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"]
    master = subprocess.Popen([redis_server_binary(), "--port", str(master_port), "--dir", str(workdir), *common],
                              stdout=subprocess.DEVNULL)
    replica = subprocess.Popen([redis_server_binary(), "--port", str(replica_port), "--dir", str(workdir), *common,
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
        stop_servers([replica, master])


def stop_servers(procs: list[subprocess.Popen[bytes]]) -> None:
    """End the Redis servers, a stopped (SIGSTOPped) one too."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(10)
