"""The analytics application: the read model the servicer and the bus consumer share.

`handle_messages` turns each bus message into a Fact (`domain.facts.from_bus`) and records a batch in
one transaction (acked by the consumer after it; with replicas, fenced by the partitions it folds);
`read` runs a report's storage function; `query` resolves a report's range and filters.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, timedelta
from pathlib import Path
from typing import TypeVar, TypeVarTuple

import yaml
from sqlalchemy.orm import Session

from nurture.api.analytics.v1 import analytics_pb2
from nurture.busmessage import BusMessage
from nurture.clock import Clock
from nurture.db import Database
from nurture.jsontypes import JsonObject
from nurture.partitions import Ownership
from services.analytics import storage
from services.analytics.domain import reports
from services.analytics.domain.facts import Fact, from_bus

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

COSTS = Path(__file__).resolve().parent.parent / "data" / "costs.yaml"
DEFAULT_DAYS = 30


def load_costs(path: Path = COSTS) -> JsonObject:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data.get("per_message", {}), dict):
        raise ValueError(f"{path}: per_message must map a channel to a cost")
    return data


class ReadModel:
    """The read model behind the servicer and the bus consumer."""

    def __init__(self, db: Database, clock: Clock, costs: JsonObject, ownership: Ownership | None = None) -> None:
        self.db = db
        self.clock = clock
        self.costs = costs
        self.ownership = ownership

    async def handle_messages(self, messages: list[BusMessage]) -> None:
        batch = [f for f in (from_bus(m) for m in messages) if f is not None]
        if batch:
            # The partitions of the bus shards the messages came from (a message's lead id names its shard).
            parts = set() if self.ownership is None else {self.ownership.partition_of(m.lead_id) for m in messages}
            await self.db.run(self._record, batch, parts)

    def _record(self, batch: list[Fact], parts: set[int]) -> None:
        """Record and fold a batch in one transaction; with replicas, the fencing check of its leads'
        partitions last: the fold reads a lead's state and writes it back, so only the owner of the
        lead's partition may commit it (two consumers folding one lead's facts could count one twice)."""
        with self.db.session() as s:
            if self.ownership is not None:
                self.ownership.shield(s, parts)  # an erasure on another replica waits for this fold
            storage.record(s, batch)
            if self.ownership is not None:
                self.ownership.check(s, parts)

    async def erase(self, lead_id: str) -> int:
        """Forget a lead (storage.erase_lead), after any fold of its partition in flight on any replica."""
        def q() -> int:
            with self.db.session() as s:
                if self.ownership is not None:
                    self.ownership.erasing(s, lead_id)
                return storage.erase_lead(s, lead_id)
        return await self.db.run(q)

    def _in_session(self, fn: Callable[[Session, *Ts], T], *args: *Ts) -> T:
        with self.db.session() as s:
            return fn(s, *args)

    async def read(self, fn: Callable[[Session, *Ts], T], *args: *Ts) -> T:
        """`fn(session, *args)` in a session of its own, on the database executor."""
        return await self.db.run(self._in_session, fn, *args)

    def query(self, q: analytics_pb2.ReportQuery) -> storage.Query:
        end = q.to.ToDatetime(tzinfo=UTC) if q.HasField("to") else self.clock.now()
        start = getattr(q, "from").ToDatetime(tzinfo=UTC) if q.HasField("from") \
            else end - timedelta(days=DEFAULT_DAYS)
        if start > end:
            raise reports.QueryError("from", "from must not be after to")
        return storage.Query(start=reports.day_of(start), end=reports.day_of(end),
                             segment=q.segment if q.HasField("segment") else None,
                             journey=q.journey if q.HasField("journey") else None)


