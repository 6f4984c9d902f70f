"""The read model in SQL: record facts once, fold them into state and day aggregates, read reports.

`record(session, facts)` runs in one transaction with the folding, so a batch is either wholly counted
or not at all (the consumer acks after the commit; a redelivered fact finds its id in
`analytics_facts` and changes nothing). `rebuild` empties the derived tables and folds the whole record
again in the order it was heard.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from services.analytics import domain
from services.analytics.facts import Fact, parse_time
from services.analytics.tables import (
    DERIVED,
    engagement,
    facts,
    lead_stages,
    leads,
    lifecycle,
    messages,
    nurtured,
    stage_counts,
    stage_dwell,
    touches,
    won,
)

CHUNK = 500  # ids per IN list


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _upsert(session: Session, table: Table, rows: list[dict[str, Any]], *, add: Sequence[str] = (),
            ignore: bool = False) -> None:
    """Insert rows; on a key that exists, add the `add` columns to it and replace the others (or with
    `ignore`, leave it as it is). One single-row statement run as executemany: it compiles once (a
    multi-row VALUES compiles again for every row count, which cost more than the writes)."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect not in ("postgresql", "sqlite"):
        raise RuntimeError(f"unsupported database {dialect}")
    make = postgresql.insert if dialect == "postgresql" else sqlite.insert
    keys = [c.name for c in table.primary_key.columns]
    others = [c.name for c in table.columns if c.name not in keys]
    stmt: Any = make(table)
    if ignore or not others:
        stmt = stmt.on_conflict_do_nothing(index_elements=keys)
    else:
        stmt = stmt.on_conflict_do_update(index_elements=keys, set_={
            n: (table.c[n] + stmt.excluded[n]) if n in add else stmt.excluded[n] for n in others})
    session.execute(stmt, rows)


def _encode(f: Fact) -> str:
    body = {k: v for k in _FACT_FIELDS if (v := getattr(f, k)) not in ("", None, 0.0)}
    body["at"] = f.at.isoformat()
    if f.since is not None:
        body["since"] = f.since.isoformat()
    return json.dumps(body, separators=(",", ":"))


def _decode(body: str) -> Fact:
    raw = json.loads(body)
    at = parse_time(raw.pop("at"))
    assert at is not None
    since = parse_time(raw.pop("since", None))
    return Fact(at=at, since=since, **raw)


_FACT_FIELDS = tuple(f.name for f in fields(Fact))


@dataclass
class _Msg:
    sent: bool = False
    opened: bool = False
    clicked: bool = False
    bounced: bool = False


class Fold:
    """Folds facts, in the order heard, into the derived tables within one session."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.eng: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: dict.fromkeys(
            ("sent", "opened", "clicked", "bounced", "unsubscribed"), 0))
        self.nurtured: set[tuple[date, str, str, str]] = set()
        self.life: dict[tuple[Any, ...], int] = defaultdict(int)
        self.counts: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
        self.dwell: dict[tuple[Any, ...], int] = defaultdict(int)
        self.touches: list[dict[str, Any]] = []
        self.won: list[dict[str, Any]] = []

    def run(self, batch: Sequence[Fact]) -> None:
        mids = sorted({f.message_id for f in batch if f.message_id})
        msgs: dict[str, _Msg] = {}
        for part in _chunks(mids):
            for r in self.s.execute(select(messages).where(messages.c.message_id.in_(part))).mappings():
                msgs[r["message_id"]] = _Msg(r["sent"], r["opened"], r["clicked"], r["bounced"])
        lead_ids = sorted({f.lead_id for f in batch if f.kind == "stage"})
        lead_state: dict[str, tuple[str, datetime]] = {}
        for part in _chunks(lead_ids):
            for r in self.s.execute(select(leads).where(leads.c.lead_id.in_(part))).mappings():
                lead_state[r["lead_id"]] = (r["stage"], _aware(r["since"]) or r["since"])
        path_leads = sorted({f.lead_id for f in batch if f.kind in ("sent", "bounced") and f.journey and f.stage})
        paths: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
        for part in _chunks(path_leads):
            for r in self.s.execute(select(lead_stages).where(lead_stages.c.lead_id.in_(part))).mappings():
                paths[(r["lead_id"], r["journey"])][r["stage"]] = {
                    **r, "entered_at": _aware(r["entered_at"]), "left_at": _aware(r["left_at"]), "_dirty": False}
        changed_msgs: set[str] = set()
        changed_leads: set[str] = set()
        for f in batch:
            if f.kind == "stage":
                self._stage(f, lead_state)
                changed_leads.add(f.lead_id)
            elif f.kind == "won":
                self.won.append({"id": f.id, "lead_id": f.lead_id, "at": f.at, "day": domain.day_of(f.at),
                                 "segment": f.segment, "amount": f.amount})
            else:
                if f.message_id:
                    changed_msgs.add(f.message_id)
                self._engagement(f, msgs.setdefault(f.message_id, _Msg()) if f.message_id else None, paths)
        self._write(msgs, changed_msgs, lead_state, changed_leads, paths)

    def _engagement(self, f: Fact, m: _Msg | None, paths: dict[tuple[str, str], dict[str, dict[str, Any]]]) -> None:
        day = domain.day_of(f.at)
        cell = self.eng[(day, f.journey, f.segment, f.template, f.channel, f.topic, f.format)]
        if f.kind == "unsubscribed":
            cell["unsubscribed"] += 1
            return
        if f.kind in ("sent", "bounced"):
            if m is None or not m.sent:
                cell["sent"] += 1
                self.nurtured.add((day, f.journey, f.segment, f.lead_id))
                if m is not None:
                    m.sent = True
                if f.journey and f.stage:
                    self._path(f, paths[(f.lead_id, f.journey)])
            if f.kind == "bounced" and (m is None or not m.bounced):
                cell["bounced"] += 1
                if m is not None:
                    m.bounced = True
            return
        flag = f.kind  # opened | clicked
        if m is not None and getattr(m, flag):
            return
        cell[flag] += 1
        if m is not None:
            setattr(m, flag, True)
        self.touches.append({"id": f.id, "lead_id": f.lead_id, "at": f.at, "journey": f.journey,
                             "template": f.template, "topic": f.topic, "format": f.format})

    def _path(self, f: Fact, stages: dict[str, dict[str, Any]]) -> None:
        if f.stage in stages:
            return  # a stage is entered once: content of an earlier stage sent again changes nothing
        for row in stages.values():
            if row["left_at"] is None:
                row["left_at"], row["_dirty"] = f.at, True
                entered_day = domain.day_of(row["entered_at"])
                key = (entered_day, f.journey, row["stage"], row["segment"])
                self.counts[key][1] += 1
                self.dwell[(*key, domain.dwell_minutes(row["entered_at"], f.at))] += 1
        stages[f.stage] = {"lead_id": f.lead_id, "journey": f.journey, "stage": f.stage, "segment": f.segment,
                           "entered_at": f.at, "left_at": None, "_dirty": True}
        self.counts[(domain.day_of(f.at), f.journey, f.stage, f.segment)][0] += 1

    def _stage(self, f: Fact, state: dict[str, tuple[str, datetime]]) -> None:
        before = state.get(f.lead_id)
        since = before[1] if before else (f.since or f.at)
        self.life[(domain.day_of(f.at), f.previous, f.stage, f.segment, domain.dwell_minutes(since, f.at))] += 1
        state[f.lead_id] = (f.stage, f.at)

    def _write(self, msgs: dict[str, _Msg], changed: set[str],
               lead_state: dict[str, tuple[str, datetime]], changed_leads: set[str],
               paths: dict[tuple[str, str], dict[str, dict[str, Any]]]) -> None:
        s = self.s
        _upsert(s, messages, [{"message_id": k, "sent": m.sent, "opened": m.opened, "clicked": m.clicked,
                               "bounced": m.bounced} for k in sorted(changed) for m in (msgs[k],)])
        _upsert(s, leads, [{"lead_id": k, "stage": lead_state[k][0], "since": lead_state[k][1]}
                           for k in sorted(changed_leads)])
        dirty = [{k: v for k, v in row.items() if k != "_dirty"}
                 for stages in paths.values() for row in stages.values() if row["_dirty"]]
        _upsert(s, lead_stages, sorted(dirty, key=lambda r: (r["lead_id"], r["journey"], r["stage"])))
        _upsert(s, engagement, [dict(zip(("day", "journey", "segment", "template", "channel", "topic", "format"),
                                         k, strict=True)) | v for k, v in sorted(self.eng.items())],
                add=("sent", "opened", "clicked", "bounced", "unsubscribed"))
        _upsert(s, nurtured, [dict(zip(("day", "journey", "segment", "lead_id"), k, strict=True))
                              for k in sorted(self.nurtured)], ignore=True)
        _upsert(s, lifecycle, [dict(zip(("day", "from_stage", "to_stage", "segment", "minutes"), k, strict=True))
                               | {"n": n} for k, n in sorted(self.life.items())], add=("n",))
        _upsert(s, stage_counts, [dict(zip(("day", "journey", "stage", "segment"), k, strict=True))
                                  | {"entered": v[0], "advanced": v[1]} for k, v in sorted(self.counts.items())],
                add=("entered", "advanced"))
        _upsert(s, stage_dwell, [dict(zip(("day", "journey", "stage", "segment", "minutes"), k, strict=True))
                                 | {"n": n} for k, n in sorted(self.dwell.items())], add=("n",))
        _upsert(s, touches, self.touches, ignore=True)
        _upsert(s, won, self.won, ignore=True)


def record(session: Session, batch: Sequence[Fact]) -> int:
    """Keep the facts not heard before (by id) and fold them in; returns how many were new."""
    unique: dict[str, Fact] = {}
    for f in batch:
        unique.setdefault(f.id, f)
    ids = list(unique)
    known: set[str] = set()
    for part in _chunks(ids):
        known.update(session.scalars(select(facts.c.id).where(facts.c.id.in_(part))))
    new = [f for f in unique.values() if f.id not in known]
    if not new:
        return 0
    session.execute(insert(facts), [{"id": f.id, "lead_id": f.lead_id, "kind": f.kind, "at": f.at,
                                     "body": _encode(f)} for f in new])
    Fold(session).run(new)
    return len(new)


def rebuild(session: Session, chunk: int = 5000) -> int:
    """Derive every table again from the facts record, in the order the facts were heard."""
    for table in DERIVED:
        session.execute(delete(table))
    done, after = 0, 0
    while True:
        rows = session.execute(select(facts.c.seq, facts.c.body).where(facts.c.seq > after)
                               .order_by(facts.c.seq).limit(chunk)).all()
        if not rows:
            return done
        Fold(session).run([_decode(r.body) for r in rows])
        done += len(rows)
        after = rows[-1].seq


def erase_lead(session: Session, lead_id: str) -> int:
    """Forget a lead's identity: its facts and per-lead rows go; the day aggregates (counts with no
    person in them) stay, so past reports do not change."""
    n = 0
    for table in (facts, leads, lead_stages, nurtured, touches, won):
        result: Any = session.execute(delete(table).where(table.c.lead_id == lead_id))
        n += int(result.rowcount or 0)
    return n


# --- reads ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    start: date
    end: date
    segment: str | None = None
    journey: str | None = None

    def where(self, table: Table, *, journey: bool = True) -> ColumnElement[bool]:
        cond = [table.c.day >= self.start, table.c.day <= self.end]
        if self.segment is not None:
            cond.append(table.c.segment == self.segment)
        if journey and self.journey is not None and "journey" in table.c:
            cond.append(table.c.journey == self.journey)
        return and_(*cond)


def engagement_report(session: Session, q: Query, group_by: str) -> list[dict[str, Any]]:
    col = engagement.c[group_by]
    measures = ("sent", "opened", "clicked", "bounced", "unsubscribed")
    rows = session.execute(select(col, *[func.sum(engagement.c[m]) for m in measures])
                           .where(q.where(engagement)).group_by(col).order_by(col)).all()
    return [domain.engagement_row(r[0], dict(zip(measures, (int(v or 0) for v in r[1:]), strict=True)))
            for r in rows]


def progression_report(session: Session, q: Query) -> dict[str, Any]:
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    for r in session.execute(select(stage_counts.c.journey, stage_counts.c.stage, func.sum(stage_counts.c.entered),
                                    func.sum(stage_counts.c.advanced)).where(q.where(stage_counts))
                             .group_by(stage_counts.c.journey, stage_counts.c.stage)):
        counts[(r[0], r[1])] = (int(r[2] or 0), int(r[3] or 0))
    dwell: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    for r in session.execute(select(stage_dwell.c.journey, stage_dwell.c.stage, stage_dwell.c.minutes,
                                    func.sum(stage_dwell.c.n)).where(q.where(stage_dwell))
                             .group_by(stage_dwell.c.journey, stage_dwell.c.stage, stage_dwell.c.minutes)):
        dwell[(r[0], r[1])][int(r[2])] = int(r[3])
    hists: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    weekly: dict[tuple[date, str], int] = defaultdict(int)
    life: Any = session.execute(select(lifecycle.c.day, lifecycle.c.from_stage, lifecycle.c.to_stage,
                                    lifecycle.c.minutes, func.sum(lifecycle.c.n)).where(q.where(lifecycle))
                             .group_by(lifecycle.c.day, lifecycle.c.from_stage, lifecycle.c.to_stage,
                                       lifecycle.c.minutes))
    for r in life:
        h = hists[(r[1], r[2])]
        h[int(r[3])] = h.get(int(r[3]), 0) + int(r[4])
        if r[2] in domain.QUALIFICATION:
            weekly[(domain.week_of(r[0]), r[2])] += int(r[4])
    return {"stages": domain.stage_rows(counts, dwell), "lifecycle": domain.lifecycle_rows(hists),
            "qualification": domain.qualification_rows(weekly)}


_STAGE_OF_METRIC = {"mql": "mql", "sql": "sql", "customers": "customer"}


def timeseries_report(session: Session, q: Query, metric: str, interval: str) -> list[dict[str, Any]]:
    by_day: dict[date, float] = {}
    if metric in ("sent", "opened", "clicked"):
        stmt = select(engagement.c.day, func.sum(engagement.c[metric])).where(q.where(engagement)) \
            .group_by(engagement.c.day)
    elif metric in _STAGE_OF_METRIC:
        stmt = select(lifecycle.c.day, func.sum(lifecycle.c.n)).where(
            q.where(lifecycle), lifecycle.c.to_stage == _STAGE_OF_METRIC[metric]).group_by(lifecycle.c.day)
    else:
        stmt = select(won.c.day, func.sum(won.c.amount)).where(q.where(won)).group_by(won.c.day)
    for day, value in session.execute(stmt):
        if value:
            by_day[day] = float(value) if metric == "revenue" else int(value)
    return domain.bucket_points(by_day, interval)


def _won_in_range(session: Session, q: Query) -> list[dict[str, Any]]:
    return [dict(r) for r in session.execute(select(won).where(q.where(won)).order_by(won.c.at, won.c.id))
            .mappings()]


def _touches_of(session: Session, deals: Sequence[dict[str, Any]], journey: str | None
                ) -> dict[str, list[dict[str, Any]]]:
    """Every touch of the deals' leads up to their last win, by lead, in time order (one query per
    CHUNK leads, not one per deal)."""
    latest: dict[str, datetime] = {}
    for d in deals:
        at = _aware(d["at"])
        assert at is not None
        latest[d["lead_id"]] = max(latest.get(d["lead_id"], at), at)
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for part in _chunks(sorted(latest)):
        cond: list[ColumnElement[bool]] = [touches.c.lead_id.in_(part)]
        if journey is not None:
            cond.append(touches.c.journey == journey)
        rows = session.execute(select(touches.c.lead_id, touches.c.at, touches.c.id, touches.c.journey,
                                      touches.c.template, touches.c.topic, touches.c.format).where(*cond)).mappings()
        for r in rows:
            row = {**r, "at": _aware(r["at"])}
            if row["at"] <= latest[row["lead_id"]]:
                out[row["lead_id"]].append(row)
    for lead_touches in out.values():
        lead_touches.sort(key=lambda t: (t["at"], t["id"]))
    return out


def _before(touched: Sequence[dict[str, Any]], until: datetime, since: datetime | None) -> list[dict[str, Any]]:
    return [t for t in touched if t["at"] <= until and (since is None or t["at"] >= since)]


def attribution_report(session: Session, q: Query, model: str, window_days: int) -> dict[str, Any]:
    deals = _won_in_range(session, q)
    by_lead = _touches_of(session, deals, q.journey)
    conversions = []
    for deal in deals:
        at = _aware(deal["at"])
        assert at is not None
        conversions.append((deal, _before(by_lead.get(deal["lead_id"], []), at, at - timedelta(days=window_days))))
    return {**domain.attribution_report(conversions, model), "window_days": window_days}


def roi_report(session: Session, q: Query, costs: dict[str, Any]) -> dict[str, Any]:
    nurtured_count = session.scalar(select(func.count(func.distinct(nurtured.c.lead_id)))
                                    .where(q.where(nurtured))) or 0
    sent_by: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for j, ch, n in session.execute(select(engagement.c.journey, engagement.c.channel, func.sum(engagement.c.sent))
                                    .where(q.where(engagement)).group_by(engagement.c.journey, engagement.c.channel)):
        sent_by[j][ch] += int(n or 0)
    per_journey = {j: int(n) for j, n in session.execute(
        select(nurtured.c.journey, func.count(func.distinct(nurtured.c.lead_id))).where(q.where(nurtured))
        .group_by(nurtured.c.journey))}
    influenced = 0.0
    by_j_revenue: dict[str, float] = defaultdict(float)
    deals = _won_in_range(session, q)
    by_lead = _touches_of(session, deals, q.journey)
    for deal in deals:
        at = _aware(deal["at"])
        assert at is not None
        touched = _before(by_lead.get(deal["lead_id"], []), at, None)
        if touched:
            influenced += float(deal["amount"])
        for j in sorted({str(t["journey"]) for t in touched}):
            by_j_revenue[j] += float(deal["amount"])
    totals: dict[str, int] = defaultdict(int)
    for chans in sent_by.values():
        for ch, n in chans.items():
            totals[ch] += n
    journeys = sorted(set(sent_by) | set(per_journey) | set(by_j_revenue))
    return domain.roi_report(
        nurtured=int(nurtured_count), sent_by_channel=totals, costs=costs, start=q.start, end=q.end,
        influenced=influenced,
        by_journey=[{"journey": j, "nurtured": per_journey.get(j, 0), "sent_by_channel": dict(sent_by.get(j, {})),
                     "influenced": by_j_revenue.get(j, 0.0)} for j in journeys])


def all_facts(session: Session) -> Iterable[Fact]:
    """The record, in the order heard (tests recount from it)."""
    for r in session.execute(select(facts.c.body).order_by(facts.c.seq)):
        yield _decode(r.body)


