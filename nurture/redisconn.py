"""Redis access and key naming: the one place a process gets its Redis client.

Keys that belong to one lead carry the hash tag `{lead_id}`, so on Redis Cluster all of a lead's keys
live on one slot and a Lua script never touches two leads. Shared structures (bus streams, timer sets)
are split into shards whose tags spread over the cluster.

With `NURTURE_REDIS_CLUSTER=1` the URL names one node of a Redis Cluster and `connect` / `connect_sync`
return redis-py's cluster clients, which learn the other nodes from it. What that asks of the code that
uses them (docs/ARCHITECTURE.md, "Storage"): every command's keys in one slot (one hash tag), pipelines
without MULTI (the cluster client sends each command to its slot's node), a multi-key read such as
XREADGROUP over several streams split per stream, and scripts run through `run_script` or a registered
script called on the client (a node that never saw the script loads it then).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster
from redis.exceptions import NoScriptError, ResponseError
from redis.typing import EncodableT, KeyT

from nurture.settings import Settings

# A client of either kind: code that holds one uses only what both offer (mypy checks it).
AsyncRedis = aioredis.Redis | aiocluster.RedisCluster
SyncRedis = redis.Redis | redis.cluster.RedisCluster
# One run of a Lua script: its keys (one slot) and its arguments.
ScriptCall: TypeAlias = tuple[Sequence[KeyT], Sequence[EncodableT]]


def connect(settings: Settings) -> AsyncRedis:
    if settings.redis_cluster:
        return aiocluster.RedisCluster.from_url(settings.redis_url, decode_responses=False,
                                                health_check_interval=30)
    return aioredis.Redis.from_url(settings.redis_url, decode_responses=False, health_check_interval=30)


def connect_sync(settings: Settings) -> SyncRedis:
    if settings.redis_cluster:
        return redis.cluster.RedisCluster.from_url(settings.redis_url, decode_responses=False)
    return redis.Redis.from_url(settings.redis_url, decode_responses=False)


def is_cluster(client: AsyncRedis | SyncRedis) -> bool:
    return isinstance(client, aiocluster.RedisCluster | redis.cluster.RedisCluster)


async def run_script(client: AsyncRedis, script: str, calls: Sequence[ScriptCall], replicas: int = 0) -> list[Any]:
    """Run one Lua script once per `(keys, args)` in one round trip per node, the answers in order.

    Each call's keys must share a slot. A pipelined EVALSHA fails with NOSCRIPT on a node that has not
    seen the script (a cluster's other nodes; any Redis after a restart or failover): those calls, and
    only those (the others ran), are run again once the script is loaded on every node. The answers
    are what each script returns (redis-py gives them no type: the caller knows its script's reply).
    With `replicas` > 0 each round trip's writes are confirmed as `execute_replicated` does.
    """
    if not calls:
        return []
    sha = script_sha(script)
    answers, unconfirmed = await _evalsha(client, sha, calls, replicas)
    missing = [i for i, a in enumerate(answers) if isinstance(a, NoScriptError)]
    if missing:
        # Loaded and run even when the first round was not confirmed: else a replica away would keep
        # every new node's first calls from ever running.
        await client.script_load(script)  # on a cluster: every primary
        again, still = await _evalsha(client, sha, [calls[i] for i in missing], replicas)
        for i, answer in zip(missing, again, strict=True):
            answers[i] = answer
        unconfirmed = unconfirmed or still
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
    if unconfirmed:
        raise NotReplicated(unconfirmed)
    return answers


async def _evalsha(client: AsyncRedis, sha: str, calls: Sequence[ScriptCall],
                   replicas: int) -> tuple[list[Any], str | None]:
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        # Through execute_command: redis-py's cluster pipeline refuses its `evalsha` method (it cannot load
        # a missing script mid-pipeline), yet routes the command by its keys' slot; the reload is ours.
        pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
    # A call's keys share a slot: its first names the node its writes are on.
    return await _execute_waiting(client, pipe, [keys[0] for keys, _ in calls if keys], replicas, False)


async def ensure_group(client: AsyncRedis, stream: KeyT, group: str) -> None:
    """Make a consumer group reading `stream` from its start (the stream too, if new); one that exists
    already is kept as it is (its place in the stream is the readers' progress)."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def script_sha(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


def shard_of(key: str, shards: int) -> int:
    """A stable shard number for a key (crc32, the same in every process and language)."""
    return zlib.crc32(key.encode()) % shards


def lead_key(lead_id: str, suffix: str) -> str:
    """A key of one lead's hot state: `nurture:lead:{<lead_id>}:<suffix>`."""
    return f"nurture:lead:{{{lead_id}}}:{suffix}"


def sharded_key(name: str, shard: int) -> str:
    """A shard of a shared structure: `nurture:<name>:{s<N>}`."""
    return f"nurture:{name}:{{s{shard}}}"


# How long a write waits for its replicas (`execute_replicated`).
WAIT_MS = 1000


class NotReplicated(RuntimeError):
    """The writes were made but not confirmed by enough replicas in time: a failover could lose them, so the
    caller must be able to make them again (scoring's outbox keeps its rows; journeys re-arms from SQL)."""


async def execute_replicated(client: AsyncRedis, pipe: Any, keys: Iterable[KeyT], replicas: int, *,
                             raise_on_error: bool = True) -> list[Any]:
    """Execute `pipe`, a pipeline (no MULTI) of writes to `keys`, and with `replicas` > 0 return only once
    that many replicas of every master written hold them, else raise NotReplicated (WAIT_MS at most).
    Redis replicates asynchronously: a write a master acknowledged is lost if the master dies before
    passing it on and its replica takes over (docs/ARCHITECTURE.md, "Redis failover").

    WAIT counts what the connection it is sent on wrote, and a client's pool has several connections
    (the cluster client's hands out its oldest free one): a WAIT sent after the pipeline, as a command
    of its own, went out on another connection and confirmed nothing. So each WAIT rides at the end of
    the pipeline, on the connection of its node's writes. The cluster client re-sends a pipeline after a
    connection error, and after a MOVED re-sends the moved writes one by one, each time with a new map of
    the slots (and new node objects), and a re-sent WAIT is no longer aimed at its node: a map that
    changed under the pipeline is NotReplicated (the caller writes again: its writes are idempotent)."""
    results, unconfirmed = await _execute_waiting(client, pipe, keys, replicas, raise_on_error)
    if unconfirmed:
        raise NotReplicated(unconfirmed)
    return results


async def _execute_waiting(client: AsyncRedis, pipe: Any, keys: Iterable[KeyT], replicas: int,
                           raise_on_error: bool) -> tuple[list[Any], str | None]:
    """`execute_replicated`'s work: the pipeline's results and, when its writes are not confirmed, why."""
    if replicas <= 0:
        return list(await pipe.execute(raise_on_error=raise_on_error)), None
    targets: list[Any]
    if isinstance(client, aiocluster.RedisCluster):
        await client.initialize()  # no-op once initialised: the node objects below are the pipeline's
        nodes: dict[KeyT, Any] = {}
        for key in keys:
            # redis-py encodes the key before hashing it: bytes route as their text does (typed str only)
            node = client.get_node_from_key(key)  # type: ignore[arg-type]
            if node is None:
                return list(await pipe.execute(raise_on_error=raise_on_error)), f"no node holds {key!r}"
            nodes[key] = node
        targets = list({n.name: n for n in nodes.values()}.values())
        for node in targets:
            pipe.execute_command("WAIT", replicas, WAIT_MS, target_nodes=node)
        results = list(await pipe.execute(raise_on_error=raise_on_error))
        if any(client.get_node_from_key(key) is not node for key, node in nodes.items()):  # type: ignore[arg-type]
            return results[:len(results) - len(targets)], \
                "the cluster's slots moved during the write: its WAIT may have gone elsewhere"
    else:
        targets = [None]
        pipe.execute_command("WAIT", replicas, WAIT_MS)
        results = list(await pipe.execute(raise_on_error=raise_on_error))
    acks = [a if isinstance(a, int) else 0 for a in results[len(results) - len(targets):]]  # an error: none
    writes = results[:len(results) - len(targets)]
    if acks and min(acks) < replicas:
        return writes, f"writes reached {min(acks)} of {replicas} replicas in {WAIT_MS} ms"
    return writes, None
