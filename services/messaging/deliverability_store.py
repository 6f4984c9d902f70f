"""SQL storage of deliverability: delivery events (sent, bounces, complaints) and provider pauses.

Blocking functions run through `Database.run`, one transaction each, like `storage.Store`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select, update

from services.messaging.domain.bounces import Counts
from services.messaging.storage import SessionFactory, aware, naive
from services.messaging.tables import delivery_events, provider_pauses


@dataclass(frozen=True)
class DeliveryEventRow:
    kind: str                 # sent | hard_bounce | soft_bounce | complaint
    message_id: str
    email_hash: str
    domain: str
    provider: str
    source: str
    at: datetime


@dataclass(frozen=True)
class Pause:
    provider: str
    since: datetime
    why: str


class DeliverabilityStore:
    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    def record(self, events: Sequence[DeliveryEventRow]) -> None:
        if not events:
            return
        with self._sessions() as s:
            s.execute(insert(delivery_events), [
                {"at": naive(e.at), "kind": e.kind, "message_id": e.message_id, "email_hash": e.email_hash,
                 "domain": e.domain[:255], "provider": e.provider[:64], "source": e.source[:64]} for e in events])

    def counts(self, since: datetime, provider: str | None = None) -> dict[tuple[str, str], Counts]:
        """(sending domain, provider) → counts of each kind since `since` (of one provider, when named)."""
        where = [delivery_events.c.at >= naive(since)]
        if provider is not None:
            where.append(delivery_events.c.provider == provider)
        with self._sessions() as s:
            rows = s.execute(select(delivery_events.c.domain, delivery_events.c.provider, delivery_events.c.kind,
                                    func.count()).where(*where)
                             .group_by(delivery_events.c.domain, delivery_events.c.provider,
                                       delivery_events.c.kind)).all()
        raw: dict[tuple[str, str], dict[str, int]] = {}
        for domain, provider, kind, n in rows:
            raw.setdefault((domain, provider), {})[kind] = int(n)
        return {key: Counts(sent=k.get("sent", 0), hard=k.get("hard_bounce", 0), soft=k.get("soft_bounce", 0),
                            complaints=k.get("complaint", 0)) for key, k in raw.items()}

    def soft_bounces(self, email_hash: str, since: datetime) -> int:
        with self._sessions() as s:
            return int(s.execute(select(func.count()).where(
                delivery_events.c.email_hash == email_hash, delivery_events.c.kind == "soft_bounce",
                delivery_events.c.at >= naive(since))).scalar() or 0)

    def paused(self) -> list[Pause]:
        with self._sessions() as s:
            rows = s.execute(select(provider_pauses).where(provider_pauses.c.resumed_at.is_(None))
                             .order_by(provider_pauses.c.provider)).mappings().all()
        return [Pause(r["provider"], aware(r["since"]) or r["since"], r["why"]) for r in rows]

    def pause(self, provider: str, why: str, now: datetime) -> bool:
        """Pause a provider; False when it was paused already (its first reason is kept)."""
        with self._sessions() as s:
            row = s.execute(select(provider_pauses).where(provider_pauses.c.provider == provider)
                            .with_for_update()).mappings().first()
            if row is None:
                s.execute(insert(provider_pauses).values(provider=provider, since=naive(now), why=why[:2000]))
                return True
            if row["resumed_at"] is None:
                return False
            s.execute(update(provider_pauses).where(provider_pauses.c.provider == provider).values(
                since=naive(now), why=why[:2000], resumed_at=None, resumed_by=None))
            return True

    def resume(self, provider: str, by: str, now: datetime) -> bool:
        """Resume a paused provider; False when it was not paused."""
        with self._sessions() as s:
            done = s.execute(update(provider_pauses).where(provider_pauses.c.provider == provider,
                                                           provider_pauses.c.resumed_at.is_(None))
                             .values(resumed_at=naive(now), resumed_by=by[:200]))
            return bool(getattr(done, "rowcount", 0))

    def resumed_at(self, provider: str) -> datetime | None:
        """When the provider was last resumed (its rates count from then), None when never."""
        with self._sessions() as s:
            value = s.execute(select(provider_pauses.c.resumed_at).where(
                provider_pauses.c.provider == provider)).scalar()
        return aware(value)

    def known(self, message_ids: Sequence[str]) -> dict[str, dict[str, tuple[str, str]]]:
        """message id → {kind: (sending domain, provider)} of the events recorded for it (the `sent`
        one says where it went; a `hard_bounce` or `complaint` one, that a report was applied already)."""
        out: dict[str, dict[str, tuple[str, str]]] = {}
        ids = list(message_ids)
        with self._sessions() as s:
            for chunk in range(0, len(ids), 500):
                for mid, kind, domain, provider in s.execute(
                        select(delivery_events.c.message_id, delivery_events.c.kind, delivery_events.c.domain,
                               delivery_events.c.provider)
                        .where(delivery_events.c.message_id.in_(ids[chunk:chunk + 500]))):
                    out.setdefault(mid, {})[kind] = (domain, provider)
        return out

    def soft_bounce_counts(self, message_ids: Sequence[str]) -> dict[str, int]:
        """message id → its soft bounces recorded so far (each soft bounce's number on the bus)."""
        out: dict[str, int] = {}
        ids = list(message_ids)
        with self._sessions() as s:
            for chunk in range(0, len(ids), 500):
                for mid, n in s.execute(
                        select(delivery_events.c.message_id, func.count())
                        .where(delivery_events.c.message_id.in_(ids[chunk:chunk + 500]),
                               delivery_events.c.kind == "soft_bounce")
                        .group_by(delivery_events.c.message_id)):
                    out[mid] = int(n)
        return out
