"""What operators did from the console (a dead letter retried, and its outcome), kept in Redis beside
the bus (`nurture:audit`, capped at AUDIT_MAXLEN entries) and shown on the operations page: who (the
role and a fingerprint of the key, never the key), what, on which service and item, and how it went."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.typing import EncodableT, FieldT

from nurture.redisconn import AsyncRedis

AUDIT_KEY = "nurture:audit"
AUDIT_MAXLEN = 10_000


@dataclass(frozen=True)
class AuditEntry:
    id: str
    at: datetime
    role: str
    key_print: str
    action: str
    service: str
    target: str
    outcome: str
    detail: str


async def record(client: AsyncRedis, *, role: str, key_print: str, action: str, service: str, target: str,
                 outcome: str, detail: str) -> str:
    fields: dict[FieldT, EncodableT] = {"e": json.dumps({"role": role, "key_print": key_print, "action": action,
                                               "service": service, "target": target, "outcome": outcome,
                                               "detail": detail[:2000]})}
    entry = await client.xadd(AUDIT_KEY, fields, maxlen=AUDIT_MAXLEN, approximate=True)
    return entry.decode() if isinstance(entry, bytes) else str(entry)


async def recent(client: AsyncRedis, limit: int = 50) -> list[AuditEntry]:
    rows = await client.xrevrange(AUDIT_KEY, count=limit)
    out = []
    for entry_id, fields in rows or []:
        raw = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        try:
            e = json.loads((fields or {})[b"e"])
        except (KeyError, ValueError):
            continue
        out.append(AuditEntry(id=raw, at=datetime.fromtimestamp(int(raw.split("-")[0]) / 1000, tz=UTC),
                              role=str(e.get("role", "")), key_print=str(e.get("key_print", "")),
                              action=str(e.get("action", "")), service=str(e.get("service", "")),
                              target=str(e.get("target", "")), outcome=str(e.get("outcome", "")),
                              detail=str(e.get("detail", ""))))
    return out
