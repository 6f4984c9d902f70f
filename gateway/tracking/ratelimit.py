"""Rate limits of the tracking endpoints, in Redis so that every gateway process counts together: per
site key (requests per second) and per visitor (events per minute). Fixed windows: one counter per key
and window, expiring with it.

The counts of concurrent requests go to Redis together (`nurture.batching.Batcher`): one script call
per site key counts a whole batch's requests in their order, so each still gets its own exact count,
where a pipeline per request cost a third of the gateway's CPU per collected event. A site key's
counters share a hash tag, so on Redis Cluster a batch's script touches one slot. The collect path
counts its batches itself (`collect`, from `gateway.tracking.collector`): one script per site key
counts, drops the events this visitor already sent (for the answer's `duplicates`) and appends the
rest to the collect stream scoring stores from (`nurture.collectstream`), all in the stream's slot."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from gateway.tracking.keys import SiteKey
from nurture import collectstream
from nurture.batching import Batcher
from nurture.redisconn import AsyncRedis, run_script

# KEYS: the counters in the order counted; ARGV: for each, its increment then its lifetime in seconds.
# A counter gets its lifetime when this call makes it (in the same atomic script, so none is left
# without one); the counts come back in KEYS order.
_TAKE_LUA = """
local counts = {}
for i, key in ipairs(KEYS) do
  local by = tonumber(ARGV[2 * i - 1])
  local n = redis.call('INCRBY', key, by)
  if n == by then redis.call('EXPIRE', key, ARGV[2 * i]) end
  counts[i] = n
end
return counts
"""

# How long the gateway remembers a visitor's event ids to answer `duplicates` (refreshed with each new
# event). Scoring's unique (visitor, client id) index is the real guard: a repeat after this is answered
# as accepted and dropped when stored.
SEEN_TTL_S = 86_400

# The most entries (one a request) a collect stream shard holds: scoring takes them off as it stores them,
# so a full stream means scoring has been away a while; the gateway then answers 503 with Retry-After and
# the snippet sends again later, rather than growing Redis without bound (nothing is lost either way).
COLLECT_STREAM_MAX = 200_000
BACKLOG_RETRY_S = 30

# The collect batch of one site key. KEYS[1]: its collect stream; then per request its key counter, its
# visitor counter and its visitor's set of event ids seen. ARGV[1], ARGV[2], ARGV[3], ARGV[4]: the key's
# limits per second and per visitor-minute, the sets' lifetime, the stream's most entries; then per
# request: the events it counts for its visitor, its traceparent, its visitor id, its number of valid
# events n, and n pairs (client id, the event encoded as JSON). A request within its limits has its new
# events (ids neither in the set nor earlier in the request) appended as one entry, and only then are
# their ids added to the set (a failed append marks nothing seen, so a retry is not taken for a repeat).
# Each request answers {key count, visitor count, a '1' (new) or '0' (seen) per valid event ('' when over
# a limit), 1 when the stream was full and nothing was appended else 0}.
_COLLECT_LUA = """
local krate, vlimit, seen_ttl, most = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local full = redis.call('XLEN', KEYS[1]) >= most and 1 or 0
local a = 5
local out = {}
for k = 2, #KEYS, 3 do
  local vby, tp, vid, n = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  a = a + 4
  local kc = redis.call('INCRBY', KEYS[k], 1)
  if kc == 1 then redis.call('EXPIRE', KEYS[k], 2) end
  local vc = redis.call('INCRBY', KEYS[k + 1], vby)
  if vc == vby then redis.call('EXPIRE', KEYS[k + 1], 61) end
  local flags = {}
  if kc <= krate and vc <= vlimit and full == 0 then
    local new, ids, here = {}, {}, {}
    for i = 1, n do
      local id = ARGV[a]
      if here[id] == nil and redis.call('SISMEMBER', KEYS[k + 2], id) == 0 then
        here[id] = true
        ids[#ids + 1] = id
        new[#new + 1] = ARGV[a + 1]
        flags[i] = '1'
      else
        flags[i] = '0'
      end
      a = a + 2
    end
    if #new > 0 then
      redis.call('XADD', KEYS[1], '*', 'v', vid, 'e', '[' .. table.concat(new, ',') .. ']', 't', tp)
      redis.call('SADD', KEYS[k + 2], unpack(ids))
      redis.call('EXPIRE', KEYS[k + 2], seen_ttl)
    end
  else
    a = a + 2 * n
  end
  out[#out + 1] = {kc, vc, table.concat(flags), full}
end
return out
"""


@dataclass(frozen=True)
class Refusal:
    scope: str          # key | visitor (over a rate limit) | backlog (the collect stream is full)
    limit: int
    retry_after_s: int


@dataclass(frozen=True)
class Appended:
    """A collect request within its limits: how many of its valid events were new (appended to the
    collect stream, in order) and how many this visitor had sent before (dropped)."""

    accepted: int
    duplicates: int


@dataclass(frozen=True)
class Take:
    """One request to count."""

    key: SiteKey
    visitor_id: str | None
    events: int
    now: float

    @classmethod
    def now_for(cls, key: SiteKey, visitor_id: str | None, events: int) -> Take:
        # Wall-clock time on purpose: this protects the service, it is not domain time.
        return cls(key, visitor_id, events, time.time())


def _tag(text: str) -> str:
    # Site keys are public, visitor ids guessable by nobody but still personal: neither goes into Redis as is.
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Append:
    """A collect request to count and, within its limits, to append: its valid events as
    `(client id, collectstream.encode_event(...))`."""

    take: Take
    events: list[tuple[str, str]]
    traceparent: str


class RateLimits:
    def __init__(self, redis: AsyncRedis, shards: int, wait_replicas: int = 0, max_batch: int = 500,
                 stream_max: int = COLLECT_STREAM_MAX) -> None:
        self._redis = redis
        self._stream_max = stream_max
        self._shards = shards
        self._wait_replicas = wait_replicas
        self._tags: dict[str, str] = {}
        self._batcher: Batcher[Take, Refusal | None] = Batcher(self.count, max_batch=max_batch, parallel=1)

    async def take(self, key: SiteKey, visitor_id: str | None, events: int = 1) -> Refusal | None:
        """Count one request for the key and `events` for the visitor; the refusal when over either."""
        return await self._batcher.submit(Take.now_for(key, visitor_id, events))

    def _prefix(self, key: str) -> str:
        prefix = self._tags.get(key)
        if prefix is None:
            prefix = self._tags[key] = collectstream.rate_limit_prefix(
                collectstream.shard_for(key, self._shards), _tag(key))
        return prefix

    async def count(self, takes: list[Take]) -> list[Refusal | None | BaseException]:
        """Count these requests, in their order, in one round trip (a Redis error fails them all)."""
        by_key: dict[str, list[int]] = {}
        for i, t in enumerate(takes):
            by_key.setdefault(t.key.key, []).append(i)
        calls: list[tuple[list[str], list[int]]] = []
        for key, indexes in by_key.items():
            counters: list[str] = []
            args: list[int] = []
            prefix = self._prefix(key)
            for i in indexes:
                t = takes[i]
                counters.append(f"{prefix}:k:{int(t.now)}")
                args += [1, 2]
                if t.visitor_id:
                    counters.append(f"{prefix}:v:{_tag(t.visitor_id)}:{int(t.now // 60)}")
                    args += [max(1, t.events), 61]
            calls.append((counters, args))
        replies = await run_script(self._redis, _TAKE_LUA, calls)  # one round trip (per node on a cluster)
        out: list[Refusal | None | BaseException] = [None] * len(takes)
        for indexes, counts in zip(by_key.values(), replies, strict=True):
            position = iter(counts)
            for i in indexes:
                out[i] = _verdict(takes[i], int(next(position)),
                                  int(next(position)) if takes[i].visitor_id else None)
        return out

    async def collect(self, appends: list[Append]) -> list[Refusal | Appended | BaseException]:
        """Count these collect requests in their order and append the new events of those within their
        limits to the collect stream, one script per site key, in one round trip; answered once Redis
        (and `wait_replicas` replicas) has the entries. A Redis error fails them all."""
        by_key: dict[str, list[int]] = {}
        for i, ap in enumerate(appends):
            by_key.setdefault(ap.take.key.key, []).append(i)
        # Keys and arguments go as bytes: redis-py's encoder tries five types on each before encoding a
        # str, and a batch of single-event requests passes ten a request (a quarter of the script call's
        # CPU in the gateway).
        calls: list[tuple[list[bytes], list[bytes]]] = []
        for key, indexes in by_key.items():
            site = appends[indexes[0]].take.key
            prefix = self._prefix(key).encode()
            stream = collectstream.stream_key(collectstream.shard_for(key, self._shards))
            keys: list[bytes] = [stream.encode()]
            args: list[bytes] = [b"%d" % site.rate_per_s, b"%d" % site.visitor_per_min, b"%d" % SEEN_TTL_S,
                                 b"%d" % self._stream_max]
            for i in indexes:
                ap = appends[i]
                take = ap.take
                visitor = _tag(take.visitor_id or "").encode()
                keys += [b"%s:k:%d" % (prefix, int(take.now)), b"%s:v:%s:%d" % (prefix, visitor, int(take.now // 60)),
                         b"%s:seen:%s" % (prefix, visitor)]
                args += [b"%d" % max(1, take.events), ap.traceparent.encode(), (take.visitor_id or "").encode(),
                         b"%d" % len(ap.events)]
                for client_id, encoded in ap.events:
                    args += [client_id.encode(), encoded.encode()]
            calls.append((keys, args))
        # One round trip (per node on a cluster), its WAIT with it; a call's first key is its stream.
        replies = await run_script(self._redis, _COLLECT_LUA, calls, self._wait_replicas)
        out: list[Refusal | Appended | BaseException] = [RuntimeError("not counted")] * len(appends)
        for indexes, answers in zip(by_key.values(), replies, strict=True):
            for i, (key_count, visitor_count, flags, full) in zip(indexes, answers, strict=True):
                refused = _verdict(appends[i].take, int(key_count), int(visitor_count))
                if refused is not None:
                    out[i] = refused
                elif int(full):
                    out[i] = Refusal("backlog", self._stream_max, BACKLOG_RETRY_S)
                else:
                    seen = flags.decode() if isinstance(flags, bytes) else str(flags)
                    out[i] = Appended(seen.count("1"), seen.count("0"))
        return out

    async def close(self) -> None:
        await self._redis.aclose()


def _verdict(take: Take, key_count: int, visitor_count: int | None) -> Refusal | None:
    if key_count > take.key.rate_per_s:
        return Refusal("key", take.key.rate_per_s, 1)
    if visitor_count is not None and visitor_count > take.key.visitor_per_min:
        return Refusal("visitor", take.key.visitor_per_min, max(1, math.ceil(60 - take.now % 60)))
    return None
