"""The journeys' step counters against a brute-force recount of the raw records (step runs,
engagements, transitions), cell by cell: journey, UTC day, step, measure, reason."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime

import sqlalchemy as sa

from nurture.settings import Settings
from services.journeys.storage import EngagementRow, StepCountRow, StepRunRow, TransitionRow


def _day(at: datetime) -> date:
    return (at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)).date()


def recount(conn: sa.Connection) -> Counter[tuple[str, date, str, str, str]]:
    """Every record read and classified here, independently of the service's counting code (the tables'
    classes only say the columns' types)."""
    r, g, t = StepRunRow, EngagementRow, TransitionRow
    cells: Counter[tuple[str, date, str, str, str]] = Counter()
    for journey, at, step, status in conn.execute(sa.select(r.journey, r.at, r.step, r.status)):
        cells[(journey, _day(at), step, "run", status)] += 1
    for journey, at, step, kind in conn.execute(sa.select(g.journey, g.at, g.step, g.type)):
        cells[(journey, _day(at), step, "engagement", kind)] += 1
    for journey, at, kind, step_from, rule, raw in conn.execute(
            sa.select(t.journey, t.at, t.type, t.step_from, t.rule, t.facts)):
        facts = json.loads(raw or "{}")
        if kind in ("entered", "completed"):
            cells[(journey, _day(at), "", kind, "")] += 1
        elif kind == "exited":
            cells[(journey, _day(at), step_from or "", "exited", rule or facts.get("reason") or "exit")] += 1
        elif kind == "goal":
            cells[(journey, _day(at), facts.get("last_sent") or step_from or "", "goal", "")] += 1
    return cells


def counters(conn: sa.Connection) -> Counter[tuple[str, date, str, str, str]]:
    out: Counter[tuple[str, date, str, str, str]] = Counter()
    c = StepCountRow
    for journey, day, step, measure, reason, n in conn.execute(
            sa.select(c.journey, c.day, c.step, c.measure, c.reason, c.n)):
        if n:
            out[(journey, day, step, measure, reason)] = n
    return out


def assert_counters_equal_recount(settings: Settings) -> Counter[tuple[str, date, str, str, str]]:
    """The counters equal the recount (and count something); returns the recount."""
    engine = sa.create_engine(settings.database_url_for("journeys"))
    try:
        with engine.connect() as conn:
            expected, got = recount(conn), counters(conn)
    finally:
        engine.dispose()
    assert expected, "the history counts something"
    assert got == expected, {k: (got.get(k), expected.get(k)) for k in set(got) | set(expected)
                             if got.get(k) != expected.get(k)}
    return expected
