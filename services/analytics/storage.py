"""The read model in SQL: record facts once, fold them into state and day aggregates, read reports.

`record(session, facts)` runs in one transaction with the folding, so a batch is either wholly counted
or not at all (the consumer acks after the commit; a redelivered fact finds its id in
`analytics_facts` and changes nothing). `rebuild` empties the derived tables and folds the whole record
again in the order it was heard.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    Date,
    Float,
    Table,
    TextClause,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from nurture import jsoncodec
from nurture.db import plan_by_key, session_writes
from services.analytics.domain import reports
from services.analytics.domain.facts import Fact, parse_time
from services.analytics.tables import (
    DERIVED,
    deal_sequences,
    deliverability,
    deliveries,
    engagement,
    facts,
    lead_scores,
    lead_stages,
    leads,
    lifecycle,
    lifecycle_bands,
    lifecycle_cohorts,
    lifecycle_subbands,
    messages,
    meta,
    nurtured,
    reach,
    score_now,
    sends,
    sequence_rates,
    stage_counts,
    stage_dwell,
    stage_dwell_bands,
    stage_dwell_subbands,
    stage_engagement,
    touches,
    won,
    won_entries,
)

FOLD_VERSION = "14"  # bump when the fold derives its tables differently: the service rebuilds them at start
NO_DAY = date(1, 1, 1)  # `analytics_reach.prev_day` of a lead's first send day in a scope
ALL_JOURNEYS = "*"  # `analytics_sequence_rates.journey` of every journey's touches (no journey key is "*")
NO_TS = -(2 ** 62)  # `analytics_lead_scores.ts` of a lead won before any fact carried its score


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)



def _upsert(session: Session, table: Table, rows: list[dict[str, Any]], *, add: Sequence[str] = (),
            ignore: bool = False) -> None:
    """Insert rows; on a key that exists, add the `add` columns to it and replace the others (or with
    `ignore`, leave it as it is). On the driver's cursor, one statement run as executemany: SQLAlchemy's
    per-row parameter processing cost more than the database's own work in the fold."""
    if not rows:
        return
    writes, conn = session_writes(session)
    columns = list(rows[0])
    # itemgetter reads a row's values in C: a generator per row was a twentieth of the fold's CPU.
    values = list(map(itemgetter(*columns), rows)) if len(columns) > 1 else [(r[columns[0]],) for r in rows]
    writes.upsert(conn, table, columns, values, keys=[c.name for c in table.primary_key.columns], add=add,
                  ignore=ignore)


def _rows(session: Session, table: Table, key: str, values: Sequence[Any], columns: Sequence[str] | None = None
          ) -> list[dict[str, Any]]:
    """`table`'s rows (those columns, or all) whose `key` is one of `values`, as dicts, read on the driver's
    cursor: through SQLAlchemy (an expanding IN list compiled per call, its rows built) the fold's look-ups
    were a tenth of its CPU."""
    if not values:
        return []
    writes, conn = session_writes(session)
    return writes.select(conn, table, columns or [c.name for c in table.columns], key, values)


def _encode(f: Fact) -> str:
    """The fact as the record's JSON body: the fields that hold something, in the dataclass's order (read
    from its `__dict__`, and written by orjson: getattr per field and the standard library's encoder were
    a tenth of the fold's CPU)."""
    body = {k: v for k, v in f.__dict__.items() if v}  # "", None, 0 and 0.0 are the defaults left out
    body["at"] = f.at.isoformat()
    if f.score is not None:
        body["score"] = f.score  # a score of 0 is a score
    if f.since is not None:
        body["since"] = f.since.isoformat()
    return jsoncodec.dumps(body)


def _decode(body: str) -> Fact:
    raw = jsoncodec.loads(body)
    assert isinstance(raw, dict)
    at = parse_time(raw.pop("at"))
    assert at is not None
    since = parse_time(raw.pop("since", None))
    return Fact(at=at, since=since, **raw)


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
        self.days: dict[str, set[tuple[date, str, str]]] = {}  # a lead's (day, journey, segment) with a send
        self.reach: dict[tuple[str, date, str, str, date], int] = defaultdict(int)
        self.life: dict[tuple[Any, ...], int] = defaultdict(int)
        self.cohorts: dict[tuple[Any, ...], int] = defaultdict(int)
        self.counts: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
        self.dwell: dict[tuple[Any, ...], int] = defaultdict(int)
        self.touches: list[dict[str, Any]] = []
        self.won: list[dict[str, Any]] = []
        self.amended: dict[tuple[str, str], float] = {}  # a stored win's amount now, by (its id, its lead)
        self.entered: set[str] = set()  # leads that entered a journey stage in this batch
        self.dl: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(DELIVERABILITY_MEASURES))
        self.snow: dict[tuple[date, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])

    def run(self, batch: Sequence[Fact]) -> None:
        mids = sorted({f.message_id for f in batch if f.message_id})
        msgs = {r["message_id"]: _Msg(r["sent"], r["opened"], r["clicked"], r["bounced"])
                for r in _rows(self.s, messages, "message_id", mids)}
        lead_ids = sorted({f.lead_id for f in batch if f.kind == "stage"})
        lead_state: dict[str, tuple[str, datetime, str]] = {
            r["lead_id"]: (r["stage"], _aware(r["since"]) or r["since"], r["segment"])
            for r in _rows(self.s, leads, "lead_id", lead_ids)}
        winners = {f.lead_id for f in batch if f.kind == "won"}
        entering = {f.lead_id for f in batch if f.kind in ("sent", "bounced") and f.journey and f.stage}
        scores = self._scores(sorted({f.lead_id for f in batch if f.score is not None} | winners | entering))
        # A lead's part in the score-now cells moves when its score, its won state or its entries change:
        # read the paths of those whose score this batch changes too.
        rescored = {lead for lead, (score, ts) in _latest_scores(batch).items()
                    if lead not in scores or (ts >= scores[lead][1] and score != scores[lead][0])}
        path_leads = sorted(entering | winners | rescored)
        paths: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
        for r in _rows(self.s, lead_stages, "lead_id", path_leads):
            paths[(r["lead_id"], r["journey"])][r["stage"]] = {
                **r, "entered_at": _aware(r["entered_at"]), "left_at": _aware(r["left_at"]), "_dirty": False}
        senders = sorted({f.lead_id for f in batch if f.kind in ("sent", "bounced")})
        for lead in senders:
            self.days[lead] = set()
        for r in _rows(self.s, nurtured, "lead_id", senders, ("lead_id", "day", "journey", "segment")):
            self.days[r["lead_id"]].add((r["day"], r["journey"], r["segment"]))
        dmids = sorted({f.message_id for f in batch if f.provider and f.message_id and f.kind in _DELIVERY_KINDS})
        dstate: dict[str, list[bool]] = {r["message_id"]: [bool(r[c]) for c in _DELIVERY_FLAGS]
                                         for r in _rows(self.s, deliveries, "message_id", dmids)}
        changed_msgs: set[str] = set()
        changed_leads: set[str] = set()
        changed_dl: set[str] = set()
        journeys_of = _journeys_by_lead(paths)
        before = {lead: _score_cells(scores.get(lead), journeys_of.get(lead, {})) for lead in path_leads}
        changed_scores: set[str] = set()
        for f in batch:
            if f.score is not None:
                self._score(f, scores, changed_scores)
            if f.provider and f.kind in _DELIVERY_KINDS:
                self._delivery(f, dstate, changed_dl)
            if f.kind in ("soft_bounced", "complaint"):
                continue  # deliverability only: no engagement figure counts them
            if f.kind == "stage":
                self._stage(f, lead_state)
                changed_leads.add(f.lead_id)
            elif f.kind == "score":
                continue
            elif f.kind == "won_amount":
                self._won_amount(f)
            elif f.kind == "won":
                st = scores.setdefault(f.lead_id, [None, NO_TS, False])
                st[2] = True
                changed_scores.add(f.lead_id)
                self.won.append({"id": f.id, "lead_id": f.lead_id, "at": f.at, "ts": reports.micros(f.at),
                                 "day": reports.day_of(f.at),
                                 "segment": f.segment, "amount": f.amount, "score": f.score})
            else:
                if f.message_id:
                    changed_msgs.add(f.message_id)
                self._engagement(f, msgs.setdefault(f.message_id, _Msg()) if f.message_id else None, paths)
        self._amend_wins()  # before `_sequence_rates` reads the stored wins' amounts
        self._sequence_rates(winners)  # before `_write` stores this batch's touches and wins
        self._write(msgs, changed_msgs, lead_state, changed_leads, paths)
        _upsert(self.s, deliveries, [dict(zip(("message_id", *_DELIVERY_FLAGS), (k, *dstate[k]), strict=True))
                                     for k in sorted(changed_dl)])
        _upsert(self.s, deliverability, [
            dict(zip(("day", "domain", "provider", "segment", "journey", *DELIVERABILITY_MEASURES), (*k, *v),
                     strict=True)) for k, v in sorted(self.dl.items())], add=DELIVERABILITY_MEASURES)
        self._won_entries(winners | self.entered, paths)
        self._score_now(before, scores, paths, changed_scores)

    def _won_amount(self, f: Fact) -> None:
        """A won deal's amount now: the win (heard in this batch, or stored) counts it from here on, in every
        report that adds revenue; the deal is still one conversion at the time it was won."""
        for w in self.won:
            if w["id"] == f.deal and w["lead_id"] == f.lead_id:
                w["amount"] = f.amount
                return
        self.amended[(f.deal, f.lead_id)] = f.amount

    def _amend_wins(self) -> None:
        # The stored win and the content sequences credited to it (which carry its amount for their report);
        # only the lead's own win (an event naming another lead's win changes nothing).
        for (deal, lead_id), amount in self.amended.items():
            self.s.execute(update(won).where(won.c.id == deal, won.c.lead_id == lead_id).values(amount=amount))
            self.s.execute(update(deal_sequences).where(deal_sequences.c.deal == deal,
                                                        deal_sequences.c.lead_id == lead_id).values(amount=amount))

    def _scores(self, leads_: Sequence[str]) -> dict[str, list[Any]]:
        """These leads' [score now, its time in microseconds, won] as stored."""
        return {r["lead_id"]: [r["score"], int(r["ts"]), bool(r["won"])]
                for r in _rows(self.s, lead_scores, "lead_id", leads_, ("lead_id", "score", "ts", "won"))}

    @staticmethod
    def _score(f: Fact, scores: dict[str, list[Any]], changed: set[str]) -> None:
        """The lead's score now is the one its latest fact carried: later in time, or as late and heard
        later (a fact heard late, with an earlier time, does not move it back)."""
        ts = reports.micros(f.at)
        st = scores.get(f.lead_id)
        if st is None:
            scores[f.lead_id] = [f.score, ts, False]
        elif ts >= st[1]:
            st[0], st[1] = f.score, ts
        else:
            return
        changed.add(f.lead_id)

    def _score_now(self, before: dict[str, dict[tuple[date, str, str], tuple[int, int]]],
                   scores: dict[str, list[Any]], paths: dict[tuple[str, str], dict[str, dict[str, Any]]],
                   changed: set[str]) -> None:
        """Move each lead's part of the score-now cells from what it was before the batch to what it is
        after (`before` holds every lead whose part could change: its path was read)."""
        journeys_of = _journeys_by_lead(paths)
        for lead, old in before.items():
            new = _score_cells(scores.get(lead), journeys_of.get(lead, {}))
            if new == old:
                continue
            for key, (entry, now) in old.items():
                cell = self.snow[key]
                cell[0] -= 1
                cell[1] -= entry
                cell[2] -= now
            for key, (entry, now) in new.items():
                cell = self.snow[key]
                cell[0] += 1
                cell[1] += entry
                cell[2] += now
        _upsert(self.s, lead_scores, [{"lead_id": k, "score": scores[k][0], "ts": scores[k][1], "won": scores[k][2]}
                                      for k in sorted(changed)])
        _upsert(self.s, score_now, [{"day": k[0], "journey": k[1], "segment": k[2], "leads": v[0],
                                     "entry_sum": v[1], "now_sum": v[2]}
                                    for k, v in sorted(self.snow.items()) if any(v)],
                add=("leads", "entry_sum", "now_sum"))

    def _won_entries(self, leads_: set[str], paths: dict[tuple[str, str], dict[str, dict[str, Any]]]) -> None:
        """Each won deal of these leads (a win or a stage entry in this batch) with its lead's earliest entry
        of each journey at or before the win, recomputed from the lead's whole path: entries are only
        added, so the rows are the same however the facts arrived. `paths` holds every stage of these leads.
        An entry the win caused (entered by the win's event or the lifecycle change it made, `<id>:stage`)
        is no part of its path: under a virtual clock the customer journey is entered at the win's instant."""
        if not leads_:
            return
        deals: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
        ordered = sorted(leads_)
        for r in _rows(self.s, won, "lead_id", ordered, ("id", "lead_id", "at")):
            deals[r["lead_id"]].append((r["id"], _aware(r["at"]) or r["at"]))
        journeys: dict[str, list[str]] = defaultdict(list)
        for lead_id, journey in paths:
            if lead_id in leads_:
                journeys[lead_id].append(journey)
        rows: list[dict[str, Any]] = []
        for lead_id in ordered:
            for deal, at in sorted(deals[lead_id]):
                for journey in sorted(journeys[lead_id]):
                    before = [(r["entered_at"], r["stage"], r["score"]) for r in paths[(lead_id, journey)].values()
                              if r["entered_at"] <= at and not _caused_by(r.get("entered_by") or "", deal)]
                    if before:
                        entered, stage, score = min(before, key=lambda e: (e[0], e[1]))
                        rows.append({"deal": deal, "journey": journey, "lead_id": lead_id,
                                     "entered_ts": reports.micros(entered), "stage": stage, "score": score})
        _upsert(self.s, won_entries, rows)

    def _sequence_rates(self, winners: set[str]) -> None:
        """Move the part in `analytics_sequence_rates` of each lead that engaged (a new touch) or won in this
        batch: from what its stored touches and wins made it to what they make with this batch's. A lead's
        part is recomputed from its whole touch history, so it is the same however the facts arrived. Its
        won deals' rows in `analytics_deal_sequences` too, from the same reads."""
        leads_ = sorted({t["lead_id"] for t in self.touches} | winners)
        if not leads_:
            return
        old: dict[str, list[_Touch]] = defaultdict(list)
        old_wins: dict[str, list[_Deal]] = defaultdict(list)
        for r in _rows(self.s, touches, "lead_id", leads_,
                       ("lead_id", "ts", "id", "journey", "template", "topic", "segment")):
            old[r["lead_id"]].append((int(r["ts"]), r["id"], r["journey"], r["template"], r["topic"], r["segment"]))
        for r in _rows(self.s, won, "lead_id", leads_, ("lead_id", "ts", "id", "day", "segment", "amount")):
            old_wins[r["lead_id"]].append((int(r["ts"]), r["id"], r["day"], r["segment"], float(r["amount"])))
        new = {lead: list(rows) for lead, rows in old.items()}
        new_wins = {lead: list(deals) for lead, deals in old_wins.items()}
        for r in self.touches:
            new.setdefault(r["lead_id"], []).append(
                (r["ts"], r["id"], r["journey"], r["template"], r["topic"], r["segment"]))
        for r in self.won:
            new_wins.setdefault(r["lead_id"], []).append((r["ts"], r["id"], r["day"], r["segment"], r["amount"]))
        delta: dict[tuple[Any, ...], int] = defaultdict(int)
        credited: list[dict[str, Any]] = []
        for lead in leads_:
            was, now = old_wins.get(lead, []), new_wins.get(lead, [])
            for key in _sequence_part(old.get(lead, []), [w[0] for w in was]):
                delta[key] -= 1
            for key in _sequence_part(new.get(lead, []), [w[0] for w in now]):
                delta[key] += 1
            if now:
                before = _deal_sequences(old.get(lead, []), was)
                credited.extend({"deal": k[0], "unit": k[1], "length": k[2], "journey": k[3], "lead_id": lead,
                                 **dict(zip(_DEAL_SEQUENCE_VALUES, v, strict=True))}
                                for k, v in sorted(_deal_sequences(new.get(lead, []), now).items())
                                if before.get(k) != v)
        periods: dict[tuple[Any, ...], int] = defaultdict(int)
        for (unit, length, journey, day, segment, sequence, lag), n in delta.items():
            if n:
                for grain, start in reports.period_starts(day):
                    periods[(unit, length, journey, start, grain, segment, sequence, lag)] += n
        _upsert(self.s, sequence_rates, [
            dict(zip(("unit", "length", "journey", "start", "grain", "segment", "sequence", "lag"), k, strict=True))
            | {"leads": n} for k, n in sorted(periods.items())], add=("leads",))
        _upsert(self.s, deal_sequences, credited)

    def _delivery(self, f: Fact, state: dict[str, list[bool]], changed: set[str]) -> None:
        """An email's deliverability outcome on its day, under its sending domain and provider: sent and
        delivered once per message (its first acceptance), a hard bounce and a complaint once per message,
        every soft bounce (messaging's `email_soft_bounced`, one per soft bounce); a bounce of a message not
        heard sent (refused at RCPT) is its send too."""
        cell = self.dl[(reports.day_of(f.at), f.domain, f.provider, f.segment, f.journey)]
        flags = state.setdefault(f.message_id, [False] * len(_DELIVERY_FLAGS)) if f.message_id \
            else [False] * len(_DELIVERY_FLAGS)
        if f.message_id:
            changed.add(f.message_id)
        sent, delivered, hard, complained = range(4)
        if f.kind == "complaint":
            if not flags[complained]:
                cell[4] += 1
                flags[complained] = True
            return
        if not flags[sent]:
            cell[0] += 1
            flags[sent] = True
        if f.kind == "sent":
            if not flags[delivered]:
                cell[1] += 1
                flags[delivered] = True
        elif f.kind == "soft_bounced":
            cell[3] += 1
        elif f.bounce == "soft":
            pass  # the soft bounce at the suppression count: its own `soft_bounced` fact counted it
        elif not flags[hard]:
            cell[2] += 1
            flags[hard] = True

    def _engagement(self, f: Fact, m: _Msg | None, paths: dict[tuple[str, str], dict[str, dict[str, Any]]]) -> None:
        if m is None and f.kind != "unsubscribed":
            # A send, bounce, open or click that names no message (an `email_opened` a caller posted
            # without `message_id`) is no email's: it cannot be counted once per message or credited to
            # the journey, template and stage that sent it, so no engagement figure counts it (it still
            # scores, moves journeys and shows on the timeline). An unsubscribe is the lead's, counted.
            return
        day = reports.day_of(f.at)
        cell = self.eng[(day, f.journey, f.segment, f.template, f.channel, f.topic, f.format, f.stage)]
        if f.kind == "unsubscribed":
            cell["unsubscribed"] += 1
            return
        if f.kind in ("sent", "bounced"):
            if m is None or not m.sent:
                cell["sent"] += 1
                self._reach(day, f.journey, f.segment, f.lead_id)
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
        if flag == "clicked" and m is not None and not m.opened:
            # A click counts as an open too: the pixel of a mail read with images off never loads, and a
            # lead who clicked has read the mail. The open is the message's one, so a real open heard
            # later is not counted again; the click alone is the touch.
            cell["opened"] += 1
            m.opened = True
        self.touches.append({"id": f.id, "lead_id": f.lead_id, "at": f.at, "ts": reports.micros(f.at),
                             "journey": f.journey,
                             "template": f.template, "topic": f.topic, "format": f.format, "segment": f.segment})

    def _reach(self, day: date, journey: str, segment: str, lead: str) -> None:
        """A send day of a lead: count it in each scope where the lead had no send that day, under its
        previous send day there, and move the next send day (a late send lands between two) under it."""
        known = self.days.setdefault(lead, set())
        if (day, journey, segment) in known:
            return
        for scope, j, sg in (("a", "", ""), ("s", "", segment), ("j", journey, ""), ("js", journey, segment)):
            by_j, by_s = scope in ("j", "js"), scope in ("s", "js")
            days = {d for d, kj, ks in known if (not by_j or kj == journey) and (not by_s or ks == segment)}
            if day in days:
                continue
            prev = max((d for d in days if d < day), default=NO_DAY)
            later = [d for d in days if d > day]
            self.reach[(scope, day, j, sg, prev)] += 1
            if later:
                nxt = min(later)
                self.reach[(scope, nxt, j, sg, prev)] -= 1
                self.reach[(scope, nxt, j, sg, day)] += 1
        known.add((day, journey, segment))
        self.nurtured.add((day, journey, segment, lead))

    def _path(self, f: Fact, stages: dict[str, dict[str, Any]]) -> None:
        if f.stage in stages:
            return  # a stage is entered once: content of an earlier stage sent again changes nothing
        for row in stages.values():
            if row["left_at"] is None:
                row["left_at"], row["_dirty"] = f.at, True
                entered_day = reports.day_of(row["entered_at"])
                key = (entered_day, f.journey, row["stage"], row["segment"])
                self.counts[key][1] += 1
                self.dwell[(*key, reports.dwell_minutes(row["entered_at"], f.at))] += 1
        self.entered.add(f.lead_id)
        stages[f.stage] = {"lead_id": f.lead_id, "journey": f.journey, "stage": f.stage, "segment": f.segment,
                           "entered_at": f.at, "left_at": None, "score": f.score, "entered_by": f.entered_by,
                           "_dirty": True}
        self.counts[(reports.day_of(f.at), f.journey, f.stage, f.segment)][0] += 1

    def _stage(self, f: Fact, state: dict[str, tuple[str, datetime, str]]) -> None:
        before = state.get(f.lead_id)
        since = before[1] if before else (f.since or f.at)
        self.life[(reports.day_of(f.at), f.previous, f.stage, f.segment, reports.dwell_minutes(since, f.at))] += 1
        if before is not None:
            # The lead leaves the stage its previous change brought it to (counted there as an arrival):
            # under that arrival's day and segment, so a stage's conversions are a part of its arrivals.
            self.cohorts[(reports.day_of(before[1]), before[0], f.stage, before[2])] += 1
        state[f.lead_id] = (f.stage, f.at, f.segment)

    def _write(self, msgs: dict[str, _Msg], changed: set[str],
               lead_state: dict[str, tuple[str, datetime, str]], changed_leads: set[str],
               paths: dict[tuple[str, str], dict[str, dict[str, Any]]]) -> None:
        s = self.s
        _upsert(s, messages, [{"message_id": k, "sent": m.sent, "opened": m.opened, "clicked": m.clicked,
                               "bounced": m.bounced} for k in sorted(changed) for m in (msgs[k],)])
        _upsert(s, leads, [{"lead_id": k, "stage": lead_state[k][0], "since": lead_state[k][1],
                            "segment": lead_state[k][2]}
                           for k in sorted(changed_leads)])
        dirty = [{k: v for k, v in row.items() if k != "_dirty"}
                 for stages in paths.values() for row in stages.values() if row["_dirty"]]
        _upsert(s, lead_stages, sorted(dirty, key=lambda r: (r["lead_id"], r["journey"], r["stage"])))
        measures = ("sent", "opened", "clicked", "bounced", "unsubscribed")
        by_content: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(measures))
        by_stage: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(measures))
        sent: dict[tuple[Any, ...], int] = defaultdict(int)
        for (day, journey, segment, template, channel, topic, fmt, stage), cell in self.eng.items():
            values = [cell[m] for m in measures]
            for acc in (by_content[(day, journey, segment, template, channel, topic, fmt)],
                        by_stage[(day, journey, stage, segment)]):
                for i, v in enumerate(values):
                    acc[i] += v
            if cell["sent"]:
                sent[(day, journey, segment, channel)] += cell["sent"]
        _upsert(s, engagement, [dict(zip(("day", "journey", "segment", "template", "channel", "topic", "format",
                                          *measures), (*k, *v), strict=True)) for k, v in sorted(by_content.items())],
                add=measures)
        _upsert(s, stage_engagement, [dict(zip(("day", "journey", "stage", "segment", *measures), (*k, *v),
                                               strict=True)) for k, v in sorted(by_stage.items())], add=measures)
        _upsert(s, sends, [dict(zip(("day", "journey", "segment", "channel"), k, strict=True)) | {"sent": n}
                           for k, n in sorted(sent.items())], add=("sent",))
        _upsert(s, nurtured, [dict(zip(("day", "journey", "segment", "lead_id"), k, strict=True))
                              for k in sorted(self.nurtured)], ignore=True)
        _upsert(s, reach, [dict(zip(("scope", "day", "journey", "segment", "prev_day"), k, strict=True)) | {"n": n}
                           for k, n in sorted(self.reach.items()) if n], add=("n",))
        _upsert(s, lifecycle, [dict(zip(("day", "from_stage", "to_stage", "segment", "minutes"), k, strict=True))
                               | {"band": reports.band(k[4]), "n": n} for k, n in sorted(self.life.items())],
                add=("n",))
        _upsert(s, lifecycle_bands, _bands(self.life, ("from_stage", "to_stage", "segment")), add=("n",))
        _upsert(s, lifecycle_subbands, _subbands(self.life, ("from_stage", "to_stage", "segment")), add=("n",))
        _upsert(s, lifecycle_cohorts, [dict(zip(("day", "from_stage", "to_stage", "segment"), k, strict=True))
                                       | {"n": n} for k, n in sorted(self.cohorts.items())], add=("n",))
        _upsert(s, stage_counts, [dict(zip(("day", "journey", "stage", "segment"), k, strict=True))
                                  | {"entered": v[0], "advanced": v[1]} for k, v in sorted(self.counts.items())],
                add=("entered", "advanced"))
        _upsert(s, stage_dwell, [dict(zip(("day", "journey", "stage", "segment", "minutes"), k, strict=True))
                                 | {"band": reports.band(k[4]), "n": n} for k, n in sorted(self.dwell.items())],
                add=("n",))
        _upsert(s, stage_dwell_bands, _bands(self.dwell, ("journey", "stage", "segment")), add=("n",))
        _upsert(s, stage_dwell_subbands, _subbands(self.dwell, ("journey", "stage", "segment")), add=("n",))
        _upsert(s, touches, self.touches, ignore=True)
        _upsert(s, won, self.won, ignore=True)


_Touch = tuple[int, str, str, str, str, str]  # ts (microseconds), id, journey, template, topic, segment
_UNIT_AT: dict[str, int] = {"template": 3, "topic": 4}


def _caused_by(entered_by: str, event_id: str) -> bool:
    """Whether a journey entry was made by this event or by the lifecycle change it caused (scoring's
    `<event id>:stage`, facts.py)."""
    return entered_by == event_id or entered_by.startswith(f"{event_id}:")


def _sequence_part(lead_touches: list[_Touch], wins: list[int]) -> set[tuple[Any, ...]]:
    """A lead's part of `analytics_sequence_rates`: for each sequence it engaged with (of every journey's
    touches, journey `ALL_JOURNEYS`, and of each journey's), where it first did, and the days to its first
    win after."""
    if not lead_touches:
        return set()
    ordered = sorted(lead_touches, key=lambda r: (r[0], r[1]))
    scopes: dict[str, list[_Touch]] = defaultdict(list)
    for r in ordered:
        scopes[ALL_JOURNEYS].append(r)
        scopes[r[2]].append(r)
    out: set[tuple[Any, ...]] = set()
    when: dict[int, tuple[date, int]] = {}  # a completing touch's day and days to the first win after it
    for journey, rows in scopes.items():
        for unit, at in _UNIT_AT.items():
            for (length, sequence), (ts, segment) in reports.first_sequences(
                    [(r[0], str(r[at]), r[5]) for r in rows]).items():
                if ts not in when:
                    when[ts] = (reports.day_of_micros(ts), reports.days_to_win(ts, wins))
                day, lag = when[ts]
                out.add((unit, length, journey, day, segment, sequence, lag))
    return out


_Deal = tuple[int, str, date, str, float]  # a won deal: ts (microseconds), id, day, segment, amount
_DEAL_SEQUENCE_VALUES = ("day", "segment", "amount", "sequence", "lag")


def _deal_sequences(lead_touches: list[_Touch], deals: list[_Deal]) -> dict[tuple[str, str, int, str], tuple[Any, ...]]:
    """A lead's rows of `analytics_deal_sequences`, keyed by (deal, unit, length, journey): for each won deal,
    the sequence its touches at or before the win end with (of every journey's, journey `ALL_JOURNEYS`, and
    of each journey's) and the days from the first step's last touch to the win. New touches only add steps
    (or lengthen one), so a deal keeps every key it had: rows are replaced, never removed."""
    ordered = sorted(lead_touches, key=lambda r: (r[0], r[1]))
    out: dict[tuple[str, str, int, str], tuple[Any, ...]] = {}
    for ts, deal, day, segment, amount in deals:
        scopes: dict[str, list[_Touch]] = defaultdict(list)
        for r in ordered:
            if r[0] > ts:
                break
            scopes[ALL_JOURNEYS].append(r)
            scopes[r[2]].append(r)
        for journey, rows in scopes.items():
            for unit, at in _UNIT_AT.items():
                for length, (sequence, cut) in reports.last_sequences([(r[0], str(r[at])) for r in rows]).items():
                    out[(deal, unit, length, journey)] = (day, segment, amount, sequence,
                                                          reports.days_to_win(cut, [ts]))
    return out


def _latest_scores(batch: Sequence[Fact]) -> dict[str, tuple[int, int]]:
    """Each lead's latest score in the batch (its time in microseconds): later in time, or as late and
    later in the batch."""
    out: dict[str, tuple[int, int]] = {}
    for f in batch:
        if f.score is not None:
            ts = reports.micros(f.at)
            if f.lead_id not in out or ts >= out[f.lead_id][1]:
                out[f.lead_id] = (f.score, ts)
    return out


def _journeys_by_lead(paths: dict[tuple[str, str], dict[str, dict[str, Any]]]
                      ) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = defaultdict(dict)
    for (lead, journey), stages in paths.items():
        if stages:
            out[lead][journey] = stages
    return out


def _score_cells(state: list[Any] | None, journeys: dict[str, dict[str, dict[str, Any]]]
                 ) -> dict[tuple[date, str, str], tuple[int, int]]:
    """A lead's part of the score-now cells: none when it converted or no fact carried its score; else,
    per journey it entered, its earliest entry's (day, journey, segment) with its score then and now, and
    the same under journey "" for its earliest entry of any journey (an entry with no score: none)."""
    if state is None or state[2] or state[0] is None:
        return {}
    now = int(state[0])
    firsts = []
    for journey, stages in journeys.items():
        row = min(stages.values(), key=lambda r: (r["entered_at"], r["stage"]))
        firsts.append((row["entered_at"], journey, row))
    out: dict[tuple[date, str, str], tuple[int, int]] = {}
    for at, journey, row in firsts:
        if row["score"] is not None:
            out[(reports.day_of(at), journey, row["segment"])] = (int(row["score"]), now)
    if firsts:
        at, _, row = min(firsts, key=lambda e: (e[0], e[1]))
        if row["score"] is not None:
            out[(reports.day_of(at), "", row["segment"])] = (int(row["score"]), now)
    return out


DELIVERABILITY_MEASURES = ("sent", "delivered", "hard_bounced", "soft_bounced", "complaints")
_DELIVERY_FLAGS = ("sent", "delivered", "hard_bounced", "complained")
_DELIVERY_KINDS = ("sent", "bounced", "soft_bounced", "complaint")


def _bands(hist: dict[tuple[Any, ...], int], dims: tuple[str, str, str]) -> list[dict[str, Any]]:
    """A batch's (day, *dims, minutes) histogram counted again per period (day, week, month) and band."""
    out: dict[tuple[Any, ...], int] = defaultdict(int)
    for (day, a, b, c, minutes), n in hist.items():
        for grain, start in reports.period_starts(day):
            out[(grain, start, a, b, c, reports.band(minutes))] += n
    return [dict(zip(("grain", "start", *dims, "band"), k, strict=True)) | {"n": n} for k, n in sorted(out.items())]


def _subbands(hist: dict[tuple[Any, ...], int], dims: tuple[str, str, str]) -> list[dict[str, Any]]:
    """The same histogram per (key, band, period) in sub-bands: `_percentiles`' narrowing step."""
    out: dict[tuple[Any, ...], int] = defaultdict(int)
    for (day, a, b, c, minutes), n in hist.items():
        for grain, start in reports.period_starts(day):
            out[(a, b, reports.band(minutes), grain, start, c, reports.sub_band(minutes))] += n
    return [dict(zip((dims[0], dims[1], "band", "grain", "start", dims[2], "sub"), k, strict=True)) | {"n": n}
            for k, n in sorted(out.items())]


def record(session: Session, batch: Sequence[Fact]) -> int:
    """Keep the facts not heard before (by id) and fold them in; returns how many were new."""
    plan_by_key(session)
    unique: dict[str, Fact] = {}
    for f in batch:
        unique.setdefault(f.id, f)
    ids = list(unique)
    known = {r["id"] for r in _rows(session, facts, "id", ids, ("id",))}
    new = [f for f in unique.values() if f.id not in known]
    if not new:
        return 0
    writes, conn = session_writes(session)
    writes.insert(conn, facts, ("id", "lead_id", "kind", "at", "body"),
                  [(f.id, f.lead_id, f.kind, f.at, _encode(f)) for f in new])
    Fold(session).run(new)
    return len(new)


def rebuild(session: Session, chunk: int = 5000) -> int:
    """Derive every table again from the facts record, in the order the facts were heard."""
    plan_by_key(session)
    for table in DERIVED:
        session.execute(delete(table))
    _upsert(session, meta, [{"key": "fold_version", "value": FOLD_VERSION}])
    done, after = 0, 0
    while True:
        rows = session.execute(select(facts.c.seq, facts.c.body).where(facts.c.seq > after)
                               .order_by(facts.c.seq).limit(chunk)).all()
        if not rows:
            return done
        Fold(session).run([_decode(r.body) for r in rows])
        done += len(rows)
        after = rows[-1].seq


def ensure_current(session: Session) -> int | None:
    """Rebuild the derived tables when they were made by another fold (a new release added or changed an
    aggregate); returns the facts folded again, or None when they were current."""
    version = session.scalar(select(meta.c.value).where(meta.c.key == "fold_version"))
    if version == FOLD_VERSION:
        return None
    return rebuild(session)


def erase_lead(session: Session, lead_id: str) -> int:
    """Forget a lead's identity: its facts and per-lead rows go; the day aggregates (counts with no
    person in them) stay, so past reports do not change."""
    n = 0
    for table in (facts, leads, lead_stages, nurtured, touches, won, won_entries, lead_scores, deal_sequences):
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
    # Figures of no journey (a proposal's email, an unsubscribe posted on its own, an open posted while
    # messaging could not say whose message it named) are one row whose group is null: no journey key
    # is the empty string. Null sorts last, after every journey's row.
    nameless = group_by == "journey"
    out = [reports.engagement_row(None if nameless and not r[0] else r[0],
                                  dict(zip(measures, (int(v or 0) for v in r[1:]), strict=True))) for r in rows]
    return sorted(out, key=lambda row: row["group"] is None) if nameless else out


def _periods(table: Table, q: Query) -> ColumnElement[bool]:
    spans = [and_(table.c.grain == g, table.c.start >= lo, table.c.start <= hi) for g, lo, hi in
             reports.periods(q.start, q.end)]
    cond = [or_(*spans) if spans else literal(False)]
    if q.segment is not None:
        cond.append(table.c.segment == q.segment)
    if q.journey is not None and "journey" in table.c:
        cond.append(table.c.journey == q.journey)
    return and_(*cond)


def _percentiles(session: Session, fine: Table, bands: Table, subs: Table, keys: Sequence[str], q: Query
                 ) -> dict[tuple[str, ...], tuple[int, float | None, float | None]]:
    """Per group of `keys`: (count, median, p90) of a minutes histogram, exactly, in three steps that each
    read few rows: the band counts of the range's periods (months, weeks, days) locate the band holding
    each rank, that band's sub-band counts (the same periods) the sub-band holding it, and only those
    sub-bands are read in whole minutes."""
    key_cols = [bands.c[k] for k in keys]
    per_band: dict[tuple[str, ...], list[tuple[int, int]]] = defaultdict(list)
    for r in session.execute(select(*key_cols, bands.c.band, func.sum(bands.c.n)).where(_periods(bands, q))
                             .group_by(*key_cols, bands.c.band)):
        if r[-1]:
            per_band[tuple(r[:len(keys)])].append((int(r[-2]), int(r[-1])))
    in_band: dict[tuple[tuple[str, ...], int], list[tuple[int, int]]] = defaultdict(list)  # (key, band): (rank, offset)
    totals: dict[tuple[str, ...], int] = {}
    for key, counts in per_band.items():
        counts.sort()
        totals[key] = n = sum(c for _, c in counts)
        for rank in reports.ranks(n):
            b, offset = _locate(counts, rank)
            in_band[(key, b)].append((rank, offset))
    value: dict[tuple[str, ...], dict[int, int]] = defaultdict(dict)
    in_sub: dict[tuple[tuple[str, ...], int], list[tuple[int, int]]] = defaultdict(list)  # (key, sub): (rank, offset)
    cells = sorted(in_band.items())
    if cells:
        sub_counts: dict[int, list[tuple[int, int]]] = defaultdict(list)
        located = [(key, b) for (key, b), _ in cells]
        for i, sub, n in session.execute(*_sub_band_counts(session, subs, keys, located, q)):
            if n:
                sub_counts[int(i)].append((int(sub), int(n)))
        for i, ((key, _b), wants) in enumerate(cells):
            counts = sorted(sub_counts[i])
            for rank, offset in wants:
                sub, at = _locate(counts, offset)
                if reports.sub_band_last(sub) == sub:
                    value[key][rank] = sub  # a sub-band of one minute: its values are that minute
                else:
                    in_sub[(key, sub)].append((rank, at))
    subcells = sorted(in_sub.items())
    if subcells:
        found = {(int(i), int(offset)): int(minutes) for i, offset, minutes in session.execute(
            *_minutes_at(session, fine, keys, subcells, q))}
        for i, ((key, _sub), wants) in enumerate(subcells):
            for rank, offset in wants:
                value[key][rank] = found[(i, offset)]
    out: dict[tuple[str, ...], tuple[int, float | None, float | None]] = {}
    for key, n in totals.items():
        lo, hi, top = reports.ranks(n)
        out[key] = (n, (value[key][lo] + value[key][hi]) / 2, float(value[key][top]))
    return out


def _values(name: str, cols: Sequence[str], rows: Sequence[Sequence[Any]], params: dict[str, Any]) -> str:
    """`name (cols) AS (VALUES ...)`, a CTE of bound rows, its parameters added to `params`. Written as SQL
    text: SQLAlchemy compiles a VALUES construct again on every call (it has no cache key), which cost
    more CPU than the database spent answering (the segment comparison locates ~150 cells a call)."""
    tuples = []
    for i, row in enumerate(rows):
        names = [f"{name}_{i}_{j}" for j in range(len(cols))]
        params.update(zip(names, row, strict=True))
        tuples.append("(" + ", ".join(f":{n}" for n in names) + ")")
    return f"{name} ({', '.join(cols)}) AS (VALUES {', '.join(tuples)})"


def _filters(session: Session, alias: str, table: Table, q: Query, params: dict[str, Any]) -> str:
    """The query's segment and journey filters on `alias` (journey where the table has one)."""
    quote = session.get_bind().dialect.identifier_preparer.quote
    out = ""
    if q.segment is not None:
        out += f" AND {alias}.{quote('segment')} = :segment"
        params["segment"] = q.segment
    if q.journey is not None and "journey" in table.c:
        out += f" AND {alias}.{quote('journey')} = :journey"
        params["journey"] = q.journey
    return out


def _sub_band_counts(session: Session, subs: Table, keys: Sequence[str],
                     cells: Sequence[tuple[tuple[str, ...], int]], q: Query) -> tuple[TextClause, dict[str, Any]]:
    """(cell, sub-band, count) of each (key, band) cell's sub-bands over the range's periods: one
    statement of a fixed shape for any number of cells, each an index range on key, band, grain and
    period start (a UNION ALL branch per cell cost more to build and compile than to run)."""
    quote = session.get_bind().dialect.identifier_preparer.quote
    params: dict[str, Any] = {}
    ks = [f"k{j}" for j in range(len(keys))]
    want = _values("want", ["cell", *ks, "band"], [(i, *key, b) for i, (key, b) in enumerate(cells)], params)
    periods = reports.periods(q.start, q.end)
    spans = _values("spans", ["grain", "lo", "hi"], periods, params)
    on = " AND ".join([*[f"t.{quote(k)} = want.{c}" for k, c in zip(keys, ks, strict=True)], "t.band = want.band",
                       "t.grain = spans.grain", f"t.{quote('start')} >= spans.lo", f"t.{quote('start')} <= spans.hi"])
    sql = (f"WITH {want}, {spans} SELECT want.cell, t.sub, SUM(t.n) FROM want CROSS JOIN spans "
           f"JOIN {quote(subs.name)} t ON {on}{_filters(session, 't', subs, q, params)} GROUP BY want.cell, t.sub")
    dates = [bindparam(f"spans_{i}_{j}", type_=Date) for i in range(len(periods)) for j in (1, 2)]
    return text(sql).bindparams(*dates), params


def _minutes_at(session: Session, fine: Table, keys: Sequence[str],
                cells: Sequence[tuple[tuple[tuple[str, ...], int], list[tuple[int, int]]]], q: Query
                ) -> tuple[TextClause, dict[str, Any]]:
    """(cell, offset, minutes): for each (key, sub-band) cell, the value at each wanted offset among its
    values in range, counted up in order of minutes inside the database (the value at offset k is the
    smallest whose running count exceeds k): only those rows come back, where sending every minute of
    the band to Python cost more than the sums. One statement of a fixed shape, as `_sub_band_counts`."""
    quote = session.get_bind().dialect.identifier_preparer.quote
    params: dict[str, Any] = {"start": q.start, "end": q.end}
    ks = [f"k{j}" for j in range(len(keys))]
    want = _values("want", ["cell", *ks, "band", "lo", "hi"],
                   [(i, *key, reports.band(sub), sub, reports.sub_band_last(sub)) for i, ((key, sub), _)
                    in enumerate(cells)], params)
    offsets = _values("offsets", ["cell", "off"], sorted(
        {(i, offset) for i, (_, wants) in enumerate(cells) for _, offset in wants}), params)
    on = " AND ".join([*[f"f.{quote(k)} = want.{c}" for k, c in zip(keys, ks, strict=True)], "f.band = want.band",
                       "f.minutes >= want.lo", "f.minutes <= want.hi"])
    sql = (f"WITH {want}, {offsets}, counts AS (SELECT want.cell AS cell, f.minutes AS minutes, SUM(f.n) AS n "
           f"FROM want JOIN {quote(fine.name)} f ON {on} WHERE f.day >= :start AND f.day <= :end"
           f"{_filters(session, 'f', fine, q, params)} GROUP BY want.cell, f.minutes), "
           "running AS (SELECT cell, minutes, n, SUM(n) OVER (PARTITION BY cell ORDER BY minutes) AS seen "
           "FROM counts) "
           "SELECT running.cell, offsets.off, running.minutes FROM running JOIN offsets ON "
           "offsets.cell = running.cell AND running.seen > offsets.off AND running.seen - running.n <= offsets.off")
    return text(sql).bindparams(bindparam("start", type_=Date), bindparam("end", type_=Date)), params


def _locate(counts: Sequence[tuple[int, int]], rank: int) -> tuple[int, int]:
    """The class holding 0-based `rank` among (class, count) pairs in order, and the rank's offset in it."""
    seen = 0
    for cls, c in counts:
        if rank < seen + c:
            return cls, rank - seen
        seen += c
    raise LookupError(f"rank {rank} beyond the {seen} values counted")


def progression_report(session: Session, q: Query, tables: Collection[str] = ()) -> dict[str, Any]:
    """The progression report's tables, only those in `tables` (empty: every one but those computed on
    request, `reports.PROGRESSION_ON_REQUEST`) computed; the others are empty (a dashboard showing two
    tables does not pay for the won deals' joins)."""
    wanted = set(tables) if tables else {t for t in reports.PROGRESSION_TABLES
                                         if t not in reports.PROGRESSION_ON_REQUEST}
    out: dict[str, Any] = dict.fromkeys(reports.PROGRESSION_TABLES, [])
    if "stages" in wanted:
        counts: dict[tuple[str, str], tuple[int, int]] = {}
        for r in session.execute(select(stage_counts.c.journey, stage_counts.c.stage,
                                        func.sum(stage_counts.c.entered), func.sum(stage_counts.c.advanced))
                                 .where(q.where(stage_counts)).group_by(stage_counts.c.journey, stage_counts.c.stage)):
            counts[(r[0], r[1])] = (int(r[2] or 0), int(r[3] or 0))
        dwell = {(k[0], k[1]): (med, p90) for k, (_, med, p90) in _percentiles(
            session, stage_dwell, stage_dwell_bands, stage_dwell_subbands, ("journey", "stage"), q).items()}
        out["stages"] = reports.stage_rows(counts, dwell)
    if "segments" in wanted:
        seg_counts: dict[tuple[str, str, str], tuple[int, int]] = {}
        sc = stage_counts
        for journey, stage, segment, entered, advanced in session.execute(
                select(sc.c.journey, sc.c.stage, sc.c.segment, func.sum(sc.c.entered), func.sum(sc.c.advanced))
                .where(q.where(sc)).group_by(sc.c.journey, sc.c.stage, sc.c.segment)):
            seg_counts[(journey, stage, segment)] = (int(entered or 0), int(advanced or 0))
        seg_dwell = {(k[0], k[1], k[2]): (med, p90) for k, (_, med, p90) in _percentiles(
            session, stage_dwell, stage_dwell_bands, stage_dwell_subbands, ("journey", "stage", "segment"), q
        ).items()}
        out["segments"] = reports.segment_stage_rows(seg_counts, seg_dwell)
    arrivals = _arrivals(session, q) if wanted & {"lifecycle", "qualification"} else {}
    if "lifecycle" in wanted:
        life = {(k[0], k[1]): (n, med, p90) for k, (n, med, p90) in _percentiles(
            session, lifecycle, lifecycle_bands, lifecycle_subbands, ("from_stage", "to_stage"), q).items()}
        out["lifecycle"] = reports.lifecycle_rows(life, *_lifecycle_conversion(session, q, arrivals))
    if "qualification" in wanted:
        weekly: dict[tuple[date, str], int] = defaultdict(int)
        for (day, to_stage), n in arrivals.items():
            if to_stage in reports.QUALIFICATION:
                weekly[(reports.week_of(day), to_stage)] += n
        out["qualification"] = reports.qualification_rows(weekly)
    deals = _deal_entries(session, q) if wanted & {"time_to_conversion", "score_progression"} else []
    if "time_to_conversion" in wanted:
        out["time_to_conversion"] = time_to_conversion(session, q, deals)
    if "content_gaps" in wanted:
        out["content_gaps"] = content_gaps(session, q)
    if "score_progression" in wanted:
        out["score_progression"] = score_progression(session, q, deals)
    if "score_now" in wanted:
        out["score_now"] = score_now_report(session, q)
    return out


def _arrivals(session: Session, q: Query) -> dict[tuple[date, str], int]:
    """Lifecycle changes into each stage in range, by day: the lifecycle table's arrivals and the weekly
    qualification counts, from one read of the day rows of `analytics_lifecycle_bands` (a row per band, where
    `analytics_lifecycle` has one per distinct minute: the same counts from a fraction of the rows)."""
    b = lifecycle_bands
    cond = [b.c.grain == "d", b.c.start >= q.start, b.c.start <= q.end]
    if q.segment is not None:
        cond.append(b.c.segment == q.segment)
    return {(day, to): int(n or 0) for day, to, n in session.execute(
        select(b.c.start, b.c.to_stage, func.sum(b.c.n)).where(*cond).group_by(b.c.start, b.c.to_stage))}


def _lifecycle_conversion(session: Session, q: Query, arrivals: dict[tuple[date, str], int]
                          ) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """Arrivals at each lifecycle stage in range (`arrivals`, by day), and of the leads that arrived at a
    stage in range, how many have left it for each next stage (in `segment` on arriving)."""
    c = lifecycle_cohorts
    arrived: dict[str, int] = defaultdict(int)
    for (_day, to), n in arrivals.items():
        arrived[to] += n
    moved = {(f, t): int(n or 0) for f, t, n in session.execute(
        select(c.c.from_stage, c.c.to_stage, func.sum(c.c.n)).where(q.where(c))
        .group_by(c.c.from_stage, c.c.to_stage))}
    return dict(arrived), moved


def score_now_report(session: Session, q: Query) -> list[dict[str, Any]]:
    """Score progression of leads not (yet) converted: per journey, the leads whose earliest entry of it
    falls in the range (in `segment` then), their score then against their score now; the first row,
    `journey` null, by each lead's earliest entry of any journey (of `journey`, when given)."""
    t = score_now
    cond = [t.c.day >= q.start, t.c.day <= q.end]
    if q.segment is not None:
        cond.append(t.c.segment == q.segment)
    if q.journey is not None:
        cond.append(t.c.journey == q.journey)
    sums = {j: (int(n or 0), int(e or 0), int(now or 0)) for j, n, e, now in session.execute(
        select(t.c.journey, func.sum(t.c.leads), func.sum(t.c.entry_sum), func.sum(t.c.now_sum))
        .where(*cond).group_by(t.c.journey))}
    overall = sums.pop("", None) if q.journey is None else sums.get(q.journey)
    return reports.score_now_rows(overall, sums)


def content_gaps(session: Session, q: Query) -> list[dict[str, Any]]:
    """Segment × stage cells of each journey (the stages and segments it sent to in the range), flagged
    against the journey's other cells; `segment` picks rows, it does not change what they are compared to."""
    measures = ("sent", "opened", "clicked", "bounced")
    t = stage_engagement
    wide = Query(q.start, q.end, None, q.journey)
    keys = (t.c.journey, t.c.stage, t.c.segment)
    sums = {(r[0], r[1], r[2]): dict(zip(measures, (int(v or 0) for v in r[3:]), strict=True))
            for r in session.execute(select(*keys, *[func.sum(t.c[m]) for m in measures])
                                     .where(wide.where(t), t.c.stage != "").group_by(*keys))}
    return [r for r in reports.content_gap_rows(sums) if q.segment is None or r["segment"] == q.segment]


@dataclass(frozen=True)
class _Win:
    ts: int  # the win, in microseconds since 1970
    amount: float
    score: int | None  # the lead's score at the win
    entered: dict[str, tuple[int, int | None]]  # journey → (the lead's earliest entry of it at or before the
    #                                             win, in microseconds; its score then)


def _wins_after_nurture(session: Session, q: Query) -> dict[str, _Win]:
    """Won deals in range, each with the journeys its lead entered before the win (of `journey`, when
    given), when first and with what score: `analytics_won_entries`' rows of each deal, read by its key.
    A deal with no entry before it is there with none."""
    e = won_entries
    on = [e.c.deal == won.c.id]
    if q.journey is not None:
        on.append(e.c.journey == q.journey)
    wins: dict[str, _Win] = {}
    for deal, ts, amount, won_score, journey, entered, score in session.execute(
            select(won.c.id, won.c.ts, won.c.amount, won.c.score, e.c.journey, e.c.entered_ts, e.c.score)
            .select_from(won.outerjoin(e, and_(*on))).where(q.where(won))):
        win = wins.get(deal)
        if win is None:
            win = wins[deal] = _Win(int(ts), float(amount), won_score, {})
        if journey is not None:
            win.entered[journey] = (int(entered), score)
    return wins


def _deal_entries(session: Session, q: Query) -> Sequence[Any]:
    """Won deals in range with the journeys their leads entered before the win (`analytics_won_entries`, of
    `journey` when given): (deal, win ts, score at the win, journey, entry ts, score at entry) as plain rows,
    a deal without an entry left out (neither report counts it)."""
    e = won_entries
    on = [e.c.deal == won.c.id]
    if q.journey is not None:
        on.append(e.c.journey == q.journey)
    return session.execute(select(won.c.id, won.c.ts, won.c.score, e.c.journey, e.c.entered_ts, e.c.score)
                           .select_from(won.join(e, and_(*on))).where(q.where(won))).all()


def _first_entries(rows: Sequence[Any]) -> dict[str, tuple[int, str, int | None, int, int | None]]:
    """Each deal's first entry (by time, then journey): (entry ts, journey, score then, win ts, score at win)."""
    first: dict[str, tuple[int, str, int | None, int, int | None]] = {}
    for deal, ts, won_score, journey, entered, score in rows:
        f = first.get(deal)
        if f is None or (entered, journey) < (f[0], f[1]):
            first[deal] = (entered, journey, score, ts, won_score)
    return first


def time_to_conversion(session: Session, q: Query, rows: Sequence[Any] | None = None
                       ) -> list[dict[str, Any]]:
    """Time in nurture before conversion: for each won deal in range, from the lead's first journey stage
    entry at or before the win to the win, over every journey (`journey` null) and per journey entered.
    One pass over plain rows (a deal object per row cost more than the read at 8,000 deals)."""
    rows = _deal_entries(session, q) if rows is None else rows
    per_journey: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for _deal, ts, _ws, journey, entered, _s in rows:
        per_journey[journey][(ts - entered) // 60_000_000 if ts > entered else 0] += 1
    overall: dict[int, int] = defaultdict(int)
    for entered, _j, _s, ts, _ws in _first_entries(rows).values():
        overall[(ts - entered) // 60_000_000 if ts > entered else 0] += 1
    summary = {j: (sum(h.values()), reports.median(h), reports.p90(h)) for j, h in per_journey.items()}
    return reports.time_to_conversion_rows(
        (sum(overall.values()), reports.median(overall), reports.p90(overall)) if overall else None, summary)


def score_progression(session: Session, q: Query, rows: Sequence[Any] | None = None
                      ) -> list[dict[str, Any]]:
    """Score progression during nurture: for each won deal in range, the lead's score when it first entered
    a journey (its earliest stage entry at or before the win) against its score at the win; over every
    journey (`journey` null) and per journey. Deals whose messages carried no score are left out."""
    rows = _deal_entries(session, q) if rows is None else rows
    sums: dict[str | None, list[int]] = defaultdict(lambda: [0, 0, 0])
    for _deal, _ts, won_score, journey, _e, score in rows:
        if won_score is not None and score is not None:
            cell = sums[journey]
            cell[0] += 1
            cell[1] += score
            cell[2] += won_score
    for _e, _j, score, _ts, won_score in _first_entries(rows).values():
        if won_score is not None and score is not None:
            cell = sums[None]
            cell[0] += 1
            cell[1] += score
            cell[2] += won_score
    return reports.score_rows({j: (n, entry, won_) for j, (n, entry, won_) in sums.items()})


def value_by_path(session: Session, q: Query) -> list[dict[str, Any]]:
    """Customer value by nurturing path: won deals in range and their revenue per path, the journeys the
    lead entered before the win in the order it first entered them (`path` null: none)."""
    return reports.path_rows((reports.path_of({j: e for j, (e, _) in w.entered.items()}), w.amount)
                             for w in _wins_after_nurture(session, q).values())


_STAGE_OF_METRIC = {"mql": "mql", "sql": "sql", "trials": "trial", "customers": "customer"}


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
    return reports.bucket_points(by_day, interval)


def deliverability_report(session: Session, q: Query, domain: str | None, provider: str | None,
                          interval: str) -> dict[str, Any]:
    """Emails sent, delivered, bounced (hard, soft) and complained of, with their rates: over the range,
    per sending domain, per mailbox provider, and per day (or ISO week) for charts."""
    t = deliverability
    cond = [q.where(t)]
    if domain is not None:
        cond.append(t.c.domain == domain)
    if provider is not None:
        cond.append(t.c.provider == provider)
    sums = [func.sum(t.c[m]) for m in DELIVERABILITY_MEASURES]

    def counts(values: Sequence[Any]) -> dict[str, int]:
        return dict(zip(DELIVERABILITY_MEASURES, (int(v or 0) for v in values), strict=True))

    total = counts(session.execute(select(*sums).where(*cond)).one())
    out: dict[str, Any] = {"totals": reports.deliverability_row({}, total)}
    for dim in ("domain", "provider"):
        col = t.c[dim]
        out[f"by_{dim}"] = [reports.deliverability_row({dim: r[0]}, counts(r[1:])) for r in session.execute(
            select(col, *sums).where(*cond).group_by(col).order_by(col))]
    points: dict[date, dict[str, int]] = {}
    for r in session.execute(select(t.c.day, *sums).where(*cond).group_by(t.c.day)):
        key = reports.week_of(r[0]) if interval == "week" else r[0]
        cell = points.setdefault(key, dict.fromkeys(DELIVERABILITY_MEASURES, 0))
        for m, v in counts(r[1:]).items():
            cell[m] += v
    out["points"] = [{"t": k.isoformat(), **v} for k, v in sorted(points.items())]
    out["interval"] = interval
    return out


def _touched_before(q: Query, window_us: int | None) -> Any:
    """Won deals in range joined to their lead's touches at or before the win (and within the window)."""
    on = [touches.c.lead_id == won.c.lead_id, touches.c.ts <= won.c.ts]
    if window_us is not None:
        on.append(touches.c.ts >= won.c.ts - window_us)
    if q.journey is not None:
        on.append(touches.c.journey == q.journey)
    return won.join(touches, and_(*on))


def _in_window(q: Query, window_us: int | None) -> ColumnElement[bool]:
    """A touch of the deal's lead at or before the win (and within the window, of the journey asked)."""
    cond = [touches.c.lead_id == won.c.lead_id, touches.c.ts <= won.c.ts]
    if window_us is not None:
        cond.append(touches.c.ts >= won.c.ts - window_us)
    if q.journey is not None:
        cond.append(touches.c.journey == q.journey)
    return and_(*cond)


def attribution_report(session: Session, q: Query, model: str, window_days: int) -> dict[str, Any]:
    total, revenue = session.execute(select(func.count(), func.sum(won.c.amount)).where(q.where(won))).one()
    window = window_days * reports.DAY_US
    one = literal(1.0, Float)
    if model == "linear":
        # Every touch in the window an equal part of its deal: pairs, with the deal's touch count.
        pairs = select(won.c.id.label("deal"), won.c.amount, touches.c.template, touches.c.topic, touches.c.format,
                       func.count().over(partition_by=won.c.id).label("k")) \
            .select_from(won.join(touches, _in_window(q, window))).where(q.where(won)).subquery()
        shared = select(pairs.c.amount, pairs.c.template, pairs.c.topic, pairs.c.format,
                        (one / pairs.c.k).label("share")).subquery()
    else:
        # First or last: one touch per deal, found by an index seek on (lead, ts) per deal, not ranked.
        order = (touches.c.ts, touches.c.id) if model == "first" else (touches.c.ts.desc(), touches.c.id.desc())
        pick = select(touches.c.template, touches.c.topic, touches.c.format).where(_in_window(q, window)) \
            .order_by(*order).limit(1)
        if session.get_bind().dialect.name == "postgresql":
            # A lateral join keeps PostgreSQL on the per-deal seek: with the pick as a scalar subquery joined
            # to touches by id, it hashed every touch (a scan of the table, 300 ms at full scale).
            chosen = pick.lateral()
            picked = select(won.c.amount, chosen.c.template, chosen.c.topic, chosen.c.format) \
                .select_from(won.join(chosen, true())).where(q.where(won)).subquery()
        else:
            # SQLite has no LATERAL; its nested loops seek the picked touch by its primary key.
            touch = pick.with_only_columns(touches.c.id).correlate(won).scalar_subquery()
            ids = select(won.c.amount, touch.label("touch")).where(q.where(won)).subquery()
            picked = select(ids.c.amount, touches.c.template, touches.c.topic, touches.c.format) \
                .select_from(ids.join(touches, touches.c.id == ids.c.touch)).subquery()
        shared = select(picked, one.label("share")).subquery()
    dims = (shared.c.template, shared.c.topic, shared.c.format)
    by_template = session.execute(select(*dims, func.sum(shared.c.share), func.sum(shared.c.share * shared.c.amount),
                                         func.count()).group_by(*dims).order_by(*dims)).all()
    if model == "linear":
        touched = select(touches.c.id).where(_in_window(q, window)).correlate(won).exists()
        attributed = session.scalar(select(func.count()).select_from(won).where(q.where(won), touched)) or 0
    else:
        # A deal is attributed when it has its one picked touch: the rows counted above, not a second read.
        attributed = sum(int(r[-1]) for r in by_template)
    per_dim: dict[str, dict[str, list[float]]] = {"topic": {}, "format": {}}
    for _template, topic, fmt, conv, rev, _n in by_template:
        for dim, value in (("topic", topic), ("format", fmt)):
            cell = per_dim[dim].setdefault(value, [0.0, 0.0])
            cell[0] += float(conv)
            cell[1] += float(rev)
    out: dict[str, Any] = {
        "model": model, "conversions": int(total or 0), "revenue": round(float(revenue or 0), 2),
        "unattributed": int(total or 0) - int(attributed),
        "by_template": [{"template": t, "topic": tp, "format": f, "conversions": round(float(c), 4),
                         "revenue": round(float(r), 2)} for t, tp, f, c, r, _n in by_template]}
    for dim in ("topic", "format"):
        out[f"by_{dim}"] = [{dim: k, "conversions": round(v[0], 4), "revenue": round(v[1], 2)}
                            for k, v in sorted(per_dim[dim].items())]
    out["window_days"] = window_days
    return out


def sequences_report(session: Session, q: Query, length: int, unit: str, window_days: int) -> dict[str, Any]:
    """The content sequences that preceded conversion: for each won deal in range, the last `length`
    pieces of content (template or topic) its lead engaged with at or before the win, within the window
    (of `journey`, when given). Sums of `analytics_deal_sequences` (a deal's sequence lies in the window
    when its `lag` does) and a count of the deals in range: no touch is read."""
    t = deal_sequences
    per_segment = {sg: int(n) for sg, n in session.execute(
        select(won.c.segment, func.count()).where(q.where(won)).group_by(won.c.segment))}
    cond = [t.c.unit == unit, t.c.length == length, t.c.journey == (ALL_JOURNEYS if q.journey is None else q.journey),
            t.c.day >= q.start, t.c.day <= q.end, t.c.lag <= window_days]
    if q.segment is not None:
        cond.append(t.c.segment == q.segment)
    cells = {(sg, seq): (int(n), float(r)) for sg, seq, n, r in session.execute(
        select(t.c.segment, t.c.sequence, func.count(), func.sum(t.c.amount)).where(*cond)
        .group_by(t.c.segment, t.c.sequence)).all()}
    return {"by": unit, "length": length, "window_days": window_days, **reports.sequence_rows(per_segment, cells),
            "rates": sequence_rates_report(session, q, length, unit, window_days)}


def sequence_rates_report(session: Session, q: Query, length: int, unit: str, window_days: int
                          ) -> list[dict[str, Any]]:
    """Conversion rate per content sequence: the leads that first engaged with it in range (in `segment`
    then; of `journey`'s touches, when given) and how many won a deal within the window after. Sums of
    `analytics_sequence_rates` over the range's days, weeks and months: no touch is read."""
    t = sequence_rates
    starts: dict[str, list[date]] = {"d": [], "w": [], "m": []}
    for grain, first in reports.period_list(q.start, q.end):
        starts[grain].append(first)
    cond = [t.c.unit == unit, t.c.length == length, t.c.journey == (ALL_JOURNEYS if q.journey is None else q.journey)]
    if q.segment is not None:
        cond.append(t.c.segment == q.segment)
    # A branch per grain, each an index seek per period start (always three: one statement shape to cache).
    # One OR of every period's (grain, start) tested each row against each period instead.
    rows = union_all(*(select(t.c.segment, t.c.sequence, t.c.leads, t.c.lag)
                       .where(*cond, t.c.start.in_(starts[grain]), t.c.grain == grain) for grain in starts)).subquery()
    converted = func.sum(case((and_(rows.c.lag >= 0, rows.c.lag <= window_days), rows.c.leads), else_=0))
    cells = {(sg, seq): (int(n or 0), int(c or 0)) for sg, seq, n, c in session.execute(
        select(rows.c.segment, rows.c.sequence, func.sum(rows.c.leads), converted)
        .group_by(rows.c.segment, rows.c.sequence)).all()}  # fetched at once: per row, a quarter of the call
    return reports.sequence_rate_rows(cells)


def _reach_where(q: Query, scope: str) -> ColumnElement[bool]:
    cond = [reach.c.scope == scope, reach.c.day >= q.start, reach.c.day <= q.end, reach.c.prev_day < q.start]
    if q.journey is not None and scope in ("j", "js"):
        cond.append(reach.c.journey == q.journey)
    if q.segment is not None and scope in ("s", "js"):
        cond.append(reach.c.segment == q.segment)
    return and_(*cond)


def roi_report(session: Session, q: Query, costs: dict[str, Any]) -> dict[str, Any]:
    # Distinct nurtured leads: a lead's send days in range that follow no send day in range (`reach`).
    scope = ("js" if q.segment is not None else "j") if q.journey is not None else \
        ("s" if q.segment is not None else "a")
    nurtured_count = session.scalar(select(func.sum(reach.c.n)).where(_reach_where(q, scope))) or 0
    sent_by: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for j, ch, n in session.execute(select(sends.c.journey, sends.c.channel, func.sum(sends.c.sent))
                                    .where(q.where(sends)).group_by(sends.c.journey, sends.c.channel)):
        sent_by[j][ch] += int(n or 0)
    per_journey = {j: int(n) for j, n in session.execute(
        select(reach.c.journey, func.sum(reach.c.n)).where(_reach_where(q, "js" if q.segment is not None else "j"))
        .group_by(reach.c.journey)) if n}
    # Each influenced deal once per journey it touched, in one read: the revenue per journey and in all.
    by_j_revenue: dict[str, float] = defaultdict(float)
    deals: dict[str, float] = {}
    for deal, amount, journey in session.execute(
            select(won.c.id, won.c.amount, touches.c.journey).distinct()
            .select_from(_touched_before(q, None)).where(q.where(won))):
        by_j_revenue[journey] += float(amount)
        deals[deal] = float(amount)
    influenced = sum(deals.values())
    totals: dict[str, int] = defaultdict(int)
    for chans in sent_by.values():
        for ch, n in chans.items():
            totals[ch] += n
    journeys = sorted(set(sent_by) | set(per_journey) | set(by_j_revenue), key=lambda j: (not j, j))
    report = reports.roi_report(
        nurtured=int(nurtured_count), sent_by_channel=totals, costs=costs, start=q.start, end=q.end,
        influenced=influenced,
        # Sends of no journey (a proposal's email) are a row whose journey is null, last: never "".
        by_journey=[{"journey": j or None, "nurtured": per_journey.get(j, 0),
                     "sent_by_channel": dict(sent_by.get(j, {})), "influenced": by_j_revenue.get(j, 0.0)}
                    for j in journeys])
    return report | {"by_path": value_by_path(session, q)}


def all_facts(session: Session) -> Iterable[Fact]:
    """The record, in the order heard (tests recount from it)."""
    for r in session.execute(select(facts.c.body).order_by(facts.c.seq)):
        yield _decode(r.body)


