"""`nurture up --redis-cluster`'s forming (cli/rediscluster.py) on real redis-server processes with a
password: fresh nodes become one cluster with every slot served; stopped and started again they are
found formed (from their nodes.conf) without being joined again, also on other ports (`--port-offset`);
a data dir of another size is refused, saying so; and nodes that cannot agree within the timeout are
reported, not waited for forever."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.cluster

from cli.rediscluster import SLOTS, ClusterError, form, node_argv
from tests.conftest import answers, cluster_port, redis_server_binary

pytestmark = pytest.mark.cluster
PASSWORD = "a-test-password"


class Nodes:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, port: int, folder: str) -> None:
        path = self.root / folder
        path.mkdir(exist_ok=True)
        conf = path / "auth.conf"
        conf.write_text(f'requirepass "{PASSWORD}"\nmasterauth "{PASSWORD}"\n')
        self.procs[port] = subprocess.Popen(node_argv(redis_server_binary(), port, path, conf),
                                            stdout=subprocess.DEVNULL)
        answers(redis.Redis(port=port, password=PASSWORD), tries=300)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.wait(10)
        self.procs.clear()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    n = Nodes(tmp_path)
    yield n
    n.stop()


def test_fresh_nodes_form_a_cluster_and_are_found_formed_after_a_restart(nodes: Nodes) -> None:
    ports = [cluster_port() for _ in range(3)]
    for i, port in enumerate(ports):
        nodes.start(port, f"node-{i}")
    form(ports, PASSWORD)
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=ports[0], password=PASSWORD)
    for i in range(100):
        client.set(f"nurture:lead:{{l{i}}}:x", i)
    client.close()
    nodes.stop()
    for i, port in enumerate(ports):
        nodes.start(port, f"node-{i}")
    form(ports, PASSWORD)  # the nodes know each other and their slots: only waited for
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=ports[1], password=PASSWORD)
    assert [int(client.get(f"nurture:lead:{{l{i}}}:x") or -1) for i in range(100)] == list(range(100))  # AOF
    info = client.cluster_info(target_nodes=client.get_primaries()[0])
    assert (info["cluster_state"], int(info["cluster_slots_assigned"])) == ("ok", SLOTS)
    client.close()


def test_nodes_started_again_on_other_ports_find_each_other(nodes: Nodes) -> None:
    """A data dir's cluster started again on moved ports (`nurture up --port-offset N`, as the message
    about a busy port suggests): each node's nodes.conf names its peers at their old ports, where nobody
    answers (or another mesh's nodes do); form introduces them again at the new ones."""
    ports = [cluster_port() for _ in range(3)]
    for i, port in enumerate(ports):
        nodes.start(port, f"node-{i}")
    form(ports, PASSWORD)
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=ports[0], password=PASSWORD)
    for i in range(100):
        client.set(f"nurture:lead:{{l{i}}}:x", i)
    client.close()
    nodes.stop()
    moved = [cluster_port() for _ in range(3)]
    for i, port in enumerate(moved):
        nodes.start(port, f"node-{i}")
    form(moved, PASSWORD, timeout=30)
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=moved[2], password=PASSWORD)
    assert [int(client.get(f"nurture:lead:{{l{i}}}:x") or -1) for i in range(100)] == list(range(100))
    assert sorted(n.port for n in client.get_nodes()) == sorted(moved)
    client.close()


def test_a_data_dir_of_another_size_is_refused(nodes: Nodes) -> None:
    ports = [cluster_port() for _ in range(2)]
    for i, port in enumerate(ports):
        nodes.start(port, f"node-{i}")
    form(ports, PASSWORD)
    extra = cluster_port()
    nodes.start(extra, "node-2")  # `--redis-cluster 3` on a data dir made with 2
    with pytest.raises(ClusterError, match="do not form one cluster of 3"):
        form([*ports, extra], PASSWORD)


def test_a_node_without_slots_among_formed_ones_times_out_with_the_states(nodes: Nodes) -> None:
    port = cluster_port()
    nodes.start(port, "node-0")
    client = redis.Redis(port=port, password=PASSWORD)
    client.execute_command("CLUSTER", "ADDSLOTS", *range(0, 100))  # a node someone half set up by hand
    client.close()
    with pytest.raises(ClusterError, match="did not reach cluster_state:ok"):
        form([port], PASSWORD, timeout=1.0)


def test_masters_with_a_replica_each_form_and_a_replica_takes_over_its_masters_slots(nodes: Nodes) -> None:
    ports = [cluster_port() for _ in range(4)]  # 2 masters, then a replica of each
    for i, port in enumerate(ports):
        nodes.start(port, f"node-{i}")
    form(ports, PASSWORD, replicas=1)
    roles = [redis.Redis(port=p, password=PASSWORD).info("replication")["role"] for p in ports]
    assert roles == ["master", "master", "slave", "slave"]
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=ports[0], password=PASSWORD)
    for i in range(100):
        client.set(f"nurture:lead:{{l{i}}}:x", i)
    client.close()
    replica = redis.Redis(port=ports[2], password=PASSWORD)
    # The graceful kind: it catches up with its master first. A manual failover that does not finish in
    # its time (a busy host starves the nodes' cluster bus) is abandoned by Redis, so it is asked again.
    deadline, asked = time.monotonic() + 60, 0.0
    while replica.info("replication")["role"] != "master" and time.monotonic() < deadline:
        if time.monotonic() - asked > 10:
            replica.execute_command("CLUSTER", "FAILOVER")
            asked = time.monotonic()
        time.sleep(0.05)
    assert replica.info("replication")["role"] == "master"
    form(ports, PASSWORD, replicas=1)  # roles swapped, still one cluster of 4: only waited for
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=ports[1], password=PASSWORD)
    assert [int(client.get(f"nurture:lead:{{l{i}}}:x") or -1) for i in range(100)] == list(range(100))
    client.close()
    replica.close()


def test_nodes_that_do_not_split_into_masters_and_replicas_are_refused() -> None:
    with pytest.raises(ValueError, match="do not make masters"):
        form([1, 2, 3], PASSWORD, replicas=1)
