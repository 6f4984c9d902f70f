"""The website collect stream: the gateway appends each accepted collect request to a Redis stream and
answers once Redis has it; scoring reads the stream with a consumer group in large batches and stores
them (`services.scoring.app.collect_stream`). This module holds what both sides share: the keys and
the entry's encoding.

Sharded by site key, as the bus is by lead: shard N is `nurture:t:collect:{s<N>}` with N =
crc32(site key) % shards, and the site key's rate-limit counters and answer-dedupe sets carry the same
hash tag (`rate_limit_prefix`), so the gateway's one script per site key (count, dedupe, append) touches
one slot on a Redis Cluster. One visitor uses one site key, so its entries keep their order in one stream.

An entry: `v` the visitor id, `e` a JSON array of its events `[type, properties, occurred_at, client id]`
(occurred_at an RFC 3339 string or null), `t` the request's W3C traceparent ("" outside a trace).
Scoring deletes an entry (XDEL, then XACK, in one MULTI) only after its transaction committed, so an
entry still in the stream is one not yet stored: "everything appended up to id X is stored" is "no
entry up to X is left" (`XRANGE key - X COUNT 1` is empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from nurture import jsoncodec
from nurture.jsontypes import JsonObject
from nurture.redisconn import shard_of, sharded_key

GROUP = "scoring-collect"


def stream_key(shard: int) -> str:
    return sharded_key("t:collect", shard)


def dead_key(shard: int) -> str:
    """Entries scoring could not store after repeated tries, kept for a person to read (same slot)."""
    return sharded_key("t:collect-dead", shard)


def shard_for(site_key: str, shards: int) -> int:
    return shard_of(site_key, shards)


def rate_limit_prefix(shard: int, key_tag: str) -> str:
    """The prefix of a site key's counters and dedupe sets: in its stream's slot."""
    return f"nurture:t:rl:{{s{shard}}}:{key_tag}"


def encode_event(type_: str, properties: JsonObject, occurred_at: datetime | None, client_id: str) -> str:
    """One event as its element of an entry's `e` array (the gateway's script joins the new ones)."""
    return jsoncodec.dumps([type_, properties, occurred_at.isoformat() if occurred_at else None, client_id])


@dataclass(frozen=True)
class StreamEvent:
    type: str
    properties: JsonObject
    occurred_at: datetime | None
    client_id: str


class MalformedEntry(ValueError):
    pass


def decode_events(raw: bytes) -> list[StreamEvent]:
    try:
        items = jsoncodec.loads(raw)
        if not isinstance(items, list):
            raise MalformedEntry("e is not a list")
        out: list[StreamEvent] = []
        for item in items:
            if not isinstance(item, list) or len(item) != 4:
                raise MalformedEntry("an event is not [type, properties, occurred_at, client_id]")
            type_, props, at, client_id = item
            if not isinstance(type_, str) or not isinstance(props, dict) or not isinstance(client_id, str) \
                    or not (at is None or isinstance(at, str)):
                raise MalformedEntry("an event's fields have the wrong types")
            out.append(StreamEvent(type_, props, datetime.fromisoformat(at) if at else None, client_id))
        return out
    except ValueError as exc:  # JSON or a timestamp
        raise MalformedEntry(str(exc)) from exc
