"""scoring's SQL for website visitors: their anonymous profiles and events (`scoring_visitors`,
`scoring_visitor_events`). Functions over a session; `app/visitors.py` holds the transactions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from nurture import jsoncodec
from nurture.db import DriverWrites
from services.scoring.domain.records import VisitorProfile
from services.scoring.tables import visitor_events, visitors

# The lock of visitors, built once (building it per call cost as much as running it; the collect path
# reads on the driver's cursor instead: `lock_visitors_for_collect`).
_LOCK = (select(visitors).where(visitors.c.id.in_(bindparam("ids", expanding=True))).order_by(visitors.c.id)
         .with_for_update())


def lock_visitors(s: Session | Connection, ids: Sequence[str]) -> dict[str, Row[Any]]:
    """The visitors that exist among `ids`, locked in key order (the one lock order, as for leads)."""
    rows = s.execute(_LOCK, {"ids": sorted(set(ids))}).all()
    return {r.id: r for r in rows}


def visitor(s: Session, visitor_id: str) -> Row[Any] | None:
    return s.execute(select(visitors).where(visitors.c.id == visitor_id)).first()


def visitors_of_lead(s: Session, lead_id: str) -> list[Row[Any]]:
    return list(s.execute(select(visitors).where(visitors.c.lead_id == lead_id).order_by(visitors.c.id)).all())


def insert_visitor(s: Session, visitor_id: str, profile: VisitorProfile, now: datetime) -> None:
    s.execute(insert(visitors).values(id=visitor_id, lead_id=None, profile=jsoncodec.dumps(profile, default=str),
                                      answers="{}", events=0, merged_events=0, created_at=now, seen_at=now))


# -- the collect path: a Core connection and the driver's cursor, as scoring's ingest of leads' events --

_NEW_VISITOR_COLUMNS = ("id", "profile", "answers", "events", "merged_events", "created_at", "seen_at")
_SAVED_VISITOR_COLUMNS = ("profile", "events", "seen_at")
EVENT_COLUMNS = ("visitor_id", "client_id", "type", "properties", "occurred_at", "score_delta")


def insert_visitors(writes: DriverWrites, c: Connection, items: list[tuple[str, VisitorProfile, int]],
                    now: datetime) -> None:
    """New visitors (id, profile, events kept) in one statement."""
    if items:
        writes.insert(c, visitors, _NEW_VISITOR_COLUMNS, [
            (vid, jsoncodec.dumps(profile, default=str), "{}", n, 0, now, now) for vid, profile, n in items])


def save_visitors(writes: DriverWrites, c: Connection, items: list[tuple[str, VisitorProfile, int]],
                  now: datetime) -> None:
    """Known visitors' scored profiles and event counts, one executemany in key order (the lock order)."""
    if items:
        writes.update(c, visitors, _SAVED_VISITOR_COLUMNS, "id", [
            (jsoncodec.dumps(profile, default=str), n, now, vid) for vid, profile, n in sorted(items)])


def update_visitor(s: Session, visitor_id: str, **values: object) -> None:
    for name in ("profile", "answers"):
        if name in values and not isinstance(values[name], str):
            values[name] = jsoncodec.dumps(values[name], default=str)
    s.execute(update(visitors).where(visitors.c.id == visitor_id).values(**values))


_LOCKED_COLUMNS = ("id", "lead_id", "profile", "events", "merged_at")


def lock_visitors_for_collect(writes: DriverWrites, c: Connection, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`lock_visitors` on the driver's cursor, for the collect path (only the columns it reads)."""
    return {r["id"]: r for r in writes.select(c, visitors, _LOCKED_COLUMNS, "id", sorted(set(ids)), lock=True)}


def seen_for_collect(writes: DriverWrites, c: Connection, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (visitor, client id) pairs are kept already, on the driver's cursor: only rows of
    this batch's client ids are read (through the unique index), not each visitor's whole history, which
    grows with every page it views."""
    wanted = set(pairs)
    if not wanted:
        return set()
    rows = writes.select(c, visitor_events, ("visitor_id", "client_id"), "visitor_id",
                         sorted({vid for vid, _ in wanted}), also=("client_id", sorted({cid for _, cid in wanted})))
    return {pair for pair in ((r["visitor_id"], r["client_id"]) for r in rows) if pair in wanted}


def insert_visitor_events(writes: DriverWrites, c: Connection, rows: list[tuple[object, ...]]) -> None:
    """Rows of `EVENT_COLUMNS`, in arrival order (their `seq` follows it)."""
    if rows:
        writes.insert(c, visitor_events, EVENT_COLUMNS, rows)


def visitor_history(s: Session, visitor_id: str) -> list[Row[Any]]:
    """An anonymous visitor's events in the order they arrived."""
    return list(s.execute(select(visitor_events).where(visitor_events.c.visitor_id == visitor_id)
                          .order_by(visitor_events.c.seq)).all())


def delete_visitor_history(s: Session, visitor_id: str) -> None:
    s.execute(delete(visitor_events).where(visitor_events.c.visitor_id == visitor_id))


def erase_visitors_of_lead(s: Session, lead_id: str) -> None:
    """Right to erasure: the visitors that became this person go with it."""
    ids = [r.id for r in s.execute(select(visitors.c.id).where(visitors.c.lead_id == lead_id)).all()]
    if ids:
        s.execute(delete(visitor_events).where(visitor_events.c.visitor_id.in_(ids)))
        s.execute(delete(visitors).where(visitors.c.id.in_(ids)))
