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


async def run_script(client: AsyncRedis, script: str, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run one Lua script once per `(keys, args)` in one round trip per node, the answers in order.

    Each call's keys must share a slot. A pipelined EVALSHA fails with NOSCRIPT on a node that has not
    seen the script (a cluster's other nodes; any Redis after a restart or failover): those calls, and
    only those (the others ran), are run again once the script is loaded on every node. The answers
    are what each script returns (redis-py gives them no type: the caller knows its script's reply).
    """
    if not calls:
        return []
    sha = script_sha(script)
    answers: list[Any] = await _evalsha(client, sha, calls)
    missing = [i for i, a in enumerate(answers) if isinstance(a, NoScriptError)]
    if missing:
        await client.script_load(script)  # on a cluster: every primary
        for i, answer in zip(missing, await _evalsha(client, sha, [calls[i] for i in missing]), strict=True):
            answers[i] = answer
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
    return answers


async def _evalsha(client: AsyncRedis, sha: str, calls: Sequence[ScriptCall]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        # Through execute_command: redis-py's cluster pipeline refuses its `evalsha` method (it cannot load
        # a missing script mid-pipeline), yet routes the command by its keys' slot; the reload is ours.
        pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
    return list(await pipe.execute(raise_on_error=False))


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


# How long a write waits for its replicas (`wait_replicated`).
WAIT_MS = 1000


class NotReplicated(RuntimeError):
    """The writes were made but not confirmed by enough replicas in time: a failover could lose them, so the
    caller must be able to make them again (scoring's outbox keeps its rows; journeys re-arms from SQL)."""


async def wait_replicated(client: AsyncRedis, keys: Iterable[str], replicas: int) -> None:
    """WAIT until `replicas` replicas of every master holding one of `keys` have everything this client's
    connection to it wrote; NotReplicated when one does not within WAIT_MS. Nothing with replicas 0.
    Redis replicates asynchronously: a write a master acknowledged is lost if the master dies before
    passing it on and its replica takes over (docs/ARCHITECTURE.md, "Redis failover")."""
    if replicas <= 0:
        return
    if isinstance(client, aiocluster.RedisCluster):
        nodes = {n.name: n for n in (client.get_node_from_key(k) for k in keys) if n is not None}
        acks = [int(await client.execute_command("WAIT", replicas, WAIT_MS, target_nodes=node))
                for node in nodes.values()]
    else:
        acks = [int(await client.wait(replicas, WAIT_MS))]
    if acks and min(acks) < replicas:
        raise NotReplicated(f"writes reached {min(acks)} of {replicas} replicas in {WAIT_MS} ms")
