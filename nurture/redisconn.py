"""Redis access and key naming.

Keys that belong to one lead carry the hash tag `{lead_id}`, so on Redis Cluster all of a lead's keys
live on one slot and a Lua script never touches two leads. Shared structures (bus streams, timer sets)
are split into shards whose tags spread over the cluster.
"""

from __future__ import annotations

import zlib

import redis
import redis.asyncio as aioredis

from nurture.settings import Settings


def connect(settings: Settings) -> aioredis.Redis:
    return aioredis.Redis.from_url(settings.redis_url, decode_responses=False, health_check_interval=30)


def connect_sync(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=False)


def shard_of(key: str, shards: int) -> int:
    """A stable shard number for a key (crc32, the same in every process and language)."""
    return zlib.crc32(key.encode()) % shards


def lead_key(lead_id: str, suffix: str) -> str:
    """A key of one lead's hot state: `nurture:lead:{<lead_id>}:<suffix>`."""
    return f"nurture:lead:{{{lead_id}}}:{suffix}"


def sharded_key(name: str, shard: int) -> str:
    """A shard of a shared structure: `nurture:<name>:{s<N>}`."""
    return f"nurture:{name}:{{s{shard}}}"
