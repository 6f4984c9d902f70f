"""The reports' arithmetic: no gRPC, no SQL. Storage hands in sums and histograms; this shapes them.

Definitions every report and the exactness tests share:
- A fact belongs to the UTC day of its time; a range `from`..`to` holds the days from `from`'s day to
  `to`'s day, both included.
- A dwell (time in a stage) is whole minutes, rounded down, never negative (a late event that carries
  an earlier time than the stage's entry counts as no time at all).
- Median is the middle value (the mean of the two middle ones for an even count); p90 is the
  nearest-rank value (the ceil(0.9 n)-th smallest).
- sent = messages handed to the mail system (accepted, or refused by a hard bounce), unique per
  message; bounced = unique per message; delivered = sent - bounced; opened and clicked are unique per
  message (a click counts as an open too, also one posted without its open); rates are over delivered.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

ENGAGEMENT_GROUPS = ("journey", "segment", "template", "channel", "topic", "format")
TIMESERIES_METRICS = ("sent", "opened", "clicked", "mql", "sql", "trials", "customers", "revenue")
# Weekly arrivals at each stage of qualification, and at `recycled` (seed 004's closed loop: leads sales
# turned down, an MQL rejected among them; one that re-qualifies arrives at mql again and counts again).
QUALIFICATION = ("mql", "sql", "trial", "customer", "recycled")
ATTRIBUTION_MODELS = ("first", "last", "linear")
SEQUENCE_UNITS = ("template", "topic")
SEQUENCE_LENGTHS = (2, 3)
# A stage is a bottleneck when its conversion is below this share of the mean of the journey's other
# stages, or its median dwell above this multiple of theirs.
BOTTLENECK_CONVERSION_SHARE = 0.5
BOTTLENECK_DWELL_MULTIPLE = 2.0
# A content gap: a segment × stage cell of a journey sent nothing, or whose open or click rate is below
# this share of the mean of the journey's other cells that delivered something.
GAP_ENGAGEMENT_SHARE = 0.5


PROGRESSION_TABLES = ("stages", "lifecycle", "qualification", "time_to_conversion", "content_gaps",
                      "score_progression", "score_now", "segments")
# Computed only when asked for by name: the segment comparison ranks every stage's dwell once per segment,
# which doubled the progression report's cost (SQLite, 20,000 leads, 90 days: 79 -> 184 ms of CPU).
PROGRESSION_ON_REQUEST = ("segments",)


class QueryError(ValueError):
    """A report query that cannot be answered (bad parameter); the gateway answers 422 with it, naming
    the parameter (`field`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY_US = 86_400_000_000


def micros(at: datetime) -> int:
    """A time as whole microseconds since 1970 (exact: no float on the way)."""
    return (at - EPOCH) // timedelta(microseconds=1)


def day_of_micros(ts: int) -> date:
    return (EPOCH + timedelta(microseconds=ts)).date()


def day_of(at: datetime) -> date:
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).date()


def week_of(day: date) -> date:
    """The Monday starting the ISO week of a day."""
    return day - timedelta(days=day.weekday())


def dwell_minutes(start: datetime, end: datetime) -> int:
    return max(0, math.floor((end - start).total_seconds() / 60))


def minutes_between(start_us: int, end_us: int) -> int:
    """`dwell_minutes` of two times in microseconds since 1970 (integer arithmetic, the same whole minutes)."""
    return max(0, (end_us - start_us) // 60_000_000)


def band(minutes: int) -> int:
    """A dwell's coarse value class: half an octave wide (a 1.5 split of each power of two), so a few dozen
    bands cover years and the band holding a percentile holds a small share of the values. Monotone:
    a larger dwell is never in a lower band."""
    x = max(0, minutes) + 1
    k = x.bit_length() - 1
    return 2 * k + (1 if 2 * x >= 3 << k else 0)


SUB_BITS = 5  # a band holds 2**SUB_BITS sub-bands (once it is that many minutes wide)


def sub_band(minutes: int) -> int:
    """A dwell's fine value class inside its band, named by its first minute: a 32nd of the band (each whole
    minute below 64 minutes is its own). Nested in `band` (a band's boundaries are multiples of its sub-bands'
    width), so a percentile's located band is narrowed to one sub-band before its minutes are read."""
    x = max(0, minutes) + 1
    shift = max(0, x.bit_length() - 2 - SUB_BITS)
    return ((x >> shift) << shift) - 1


def sub_band_last(first: int) -> int:
    """The last minute of the sub-band whose first minute is `first` (`sub_band`'s value)."""
    shift = max(0, (first + 1).bit_length() - 2 - SUB_BITS)
    return first + (1 << shift) - 1


def periods(start: date, end: date) -> list[tuple[str, date, date]]:
    """The days start..end as disjoint periods, coarsest first where they fit: (grain, first period's first
    day, last period's first day) for runs of whole months (`m`), ISO weeks (`w`) and days (`d`)."""
    out: list[tuple[str, date, date]] = []
    day = start
    while day <= end:
        next_month = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
        if day.day == 1 and next_month - timedelta(days=1) <= end:
            grain, after = "m", next_month
        elif day.weekday() == 0 and day + timedelta(days=6) <= end:
            grain, after = "w", day + timedelta(days=7)
        else:
            grain, after = "d", day + timedelta(days=1)
        if out and out[-1][0] == grain:
            out[-1] = (grain, out[-1][1], day)
        else:
            out.append((grain, day, day))
        day = after
    return out


def period_list(start: date, end: date) -> list[tuple[str, date]]:
    """Each period of `periods(start, end)` by itself: (grain, its first day)."""
    out: list[tuple[str, date]] = []
    for grain, first, last in periods(start, end):
        day = first
        while day <= last:
            out.append((grain, day))
            day = (day.replace(day=28) + timedelta(days=4)).replace(day=1) if grain == "m" else \
                day + timedelta(days=7 if grain == "w" else 1)
    return out


def period_starts(day: date) -> tuple[tuple[str, date], ...]:
    """The day, ISO week and month a fact of this day is counted in."""
    return ("d", day), ("w", week_of(day)), ("m", day.replace(day=1))


def ranks(n: int) -> tuple[int, int, int]:
    """0-based ranks of the two middle values and of the p90 value among n sorted values."""
    return (n - 1) // 2, n // 2, math.ceil(0.9 * n) - 1


def median(hist: Mapping[int, int]) -> float | None:
    """The median of a histogram {value: count}."""
    n = sum(hist.values())
    if n == 0:
        return None
    lo, hi = nth(hist, (n - 1) // 2), nth(hist, n // 2)
    return (lo + hi) / 2


def p90(hist: Mapping[int, int]) -> float | None:
    n = sum(hist.values())
    if n == 0:
        return None
    return float(nth(hist, math.ceil(0.9 * n) - 1))


def nth(hist: Mapping[int, int], index: int) -> int:
    """The value at 0-based rank `index` of the sorted multiset."""
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if index < seen:
            return value
    raise IndexError(index)


def hours(minutes: float | None) -> float | None:
    return None if minutes is None else round(minutes / 60, 2)


def rate(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def engagement_row(group: str | None, sums: Mapping[str, int]) -> dict[str, Any]:
    delivered = sums["sent"] - sums["bounced"]
    return {"group": group, "sent": sums["sent"], "delivered": delivered, "opened": sums["opened"],
            "clicked": sums["clicked"], "unsubscribed": sums["unsubscribed"], "bounced": sums["bounced"],
            "open_rate": rate(sums["opened"], delivered), "click_rate": rate(sums["clicked"], delivered)}


def deliverability_row(key: Mapping[str, str], sums: Mapping[str, int]) -> dict[str, Any]:
    """Deliverability figures with their rates: delivery and bounces over sent, complaints over delivered
    (the providers' measure)."""
    return {**key, **sums, "delivery_rate": rate(sums["delivered"], sums["sent"]),
            "hard_bounce_rate": rate(sums["hard_bounced"], sums["sent"]),
            "soft_bounce_rate": rate(sums["soft_bounced"], sums["sent"]),
            "complaint_rate": rate(sums["complaints"], sums["delivered"])}


def segment_stage_rows(counts: Mapping[tuple[str, str, str], tuple[int, int]],
                       dwell: Mapping[tuple[str, str, str], tuple[float | None, float | None]]) -> list[dict[str, Any]]:
    """Segment comparison: each journey stage's conversion and velocity per segment (the lead's on entry)."""
    out = []
    for (journey, stage, segment), (entered, advanced) in sorted(counts.items()):
        med, p90_ = dwell.get((journey, stage, segment), (None, None))
        out.append({"journey": journey, "stage": stage, "segment": segment, "entered": entered,
                    "advanced": advanced, "conversion_rate": rate(advanced, entered), "median_hours": hours(med),
                    "p90_hours": hours(p90_)})
    return out


def stage_rows(counts: Mapping[tuple[str, str], tuple[int, int]],
               dwell: Mapping[tuple[str, str], tuple[float | None, float | None]]) -> list[dict[str, Any]]:
    """Stage conversion and velocity per (journey, stage) from entered/advanced counts and the (median,
    p90) dwell in minutes, with bottlenecks flagged and explained.

    A stage no lead has left yet (advanced 0) is treated as where the journey ends so far and is not
    compared: every journey's last stage would otherwise look like its worst."""
    rows: list[dict[str, Any]] = []
    for (journey, stage), (entered, advanced) in sorted(counts.items()):
        med, p90_ = dwell.get((journey, stage), (None, None))
        rows.append({"journey": journey, "stage": stage, "entered": entered, "advanced": advanced,
                     "conversion_rate": rate(advanced, entered), "median_hours": hours(med),
                     "p90_hours": hours(p90_), "bottleneck": False, "why": "", "_median": med})
    by_journey: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["advanced"]:
            by_journey.setdefault(r["journey"], []).append(r)
    for stages in by_journey.values():
        for r in stages:
            others = [o for o in stages if o is not r]
            if not others:
                continue
            reasons = []
            mean_conv = sum(o["advanced"] / o["entered"] for o in others) / len(others)
            conv = r["advanced"] / r["entered"]
            if conv < BOTTLENECK_CONVERSION_SHARE * mean_conv:
                reasons.append(f"conversion {conv:.2%} against {mean_conv:.2%} for the journey's other stages")
            meds = [o["_median"] for o in others if o["_median"] is not None]
            if meds and r["_median"] is not None:
                mean_med = sum(meds) / len(meds)
                if r["_median"] > BOTTLENECK_DWELL_MULTIPLE * mean_med:
                    reasons.append(f"median dwell {r['_median'] / 60:.1f} h against {mean_med / 60:.1f} h "
                                   "for the journey's other stages")
            if reasons:
                r["bottleneck"], r["why"] = True, "; ".join(reasons)
    for r in rows:
        del r["_median"]
    return rows


def lifecycle_rows(changes: Mapping[tuple[str, str], tuple[int, float | None, float | None]],
                   arrived: Mapping[str, int], moved: Mapping[tuple[str, str], int]) -> list[dict[str, Any]]:
    """Lifecycle transitions per (from, to): their count, median and p90 (from minutes), and the conversion
    rate: of the leads that arrived at `from` in range, the share that has moved on to `to` (null when none
    arrived there in range: a lead's first stage, or none in range)."""
    return [{"from": f, "to": t, "count": changes.get((f, t), (0, None, None))[0],
             "median_hours": hours(changes.get((f, t), (0, None, None))[1]),
             "p90_hours": hours(changes.get((f, t), (0, None, None))[2]),
             "conversion_rate": rate(moved.get((f, t), 0), arrived.get(f, 0))}
            for f, t in sorted(set(changes) | {k for k, n in moved.items() if n})]


def time_to_conversion_rows(overall: tuple[int, float | None, float | None] | None,
                            per_journey: Mapping[str, tuple[int, float | None, float | None]]
                            ) -> list[dict[str, Any]]:
    """Conversions and their median and p90 time in nurture (hours) from (count, median, p90) in whole
    minutes: first over every journey (`journey` None), then per journey."""
    out = []
    for journey, (n, med, p90_) in [(None, overall or (0, None, None)), *sorted(per_journey.items())]:
        out.append({"journey": journey, "conversions": n, "median_hours": hours(med), "p90_hours": hours(p90_)})
    return out


def content_gap_rows(sums: Mapping[tuple[str, str, str], Mapping[str, int]]) -> list[dict[str, Any]]:
    """Every (journey, stage, segment) cell of the stages a journey sent and the segments it sent to, with
    its engagement and whether (and why) it is a gap."""
    sent = [k for k, c in sums.items() if c["sent"]]
    rows: list[dict[str, Any]] = []
    for journey in sorted({j for j, _, _ in sent}):
        segs = sorted({sg for j, _, sg in sent if j == journey})
        for stage, seg in sorted((st, sg) for st in {st for j, st, _ in sent if j == journey} for sg in segs):
            c = sums.get((journey, stage, seg), {"sent": 0, "opened": 0, "clicked": 0, "bounced": 0})
            delivered = c["sent"] - c["bounced"]
            rows.append({"journey": journey, "stage": stage, "segment": seg, "sent": c["sent"],
                         "delivered": delivered, "opened": c["opened"], "clicked": c["clicked"],
                         "open_rate": rate(c["opened"], delivered), "click_rate": rate(c["clicked"], delivered),
                         "gap": False, "why": ""})
    for r in rows:
        if r["sent"] == 0:
            r["gap"], r["why"] = True, "no content sent"
            continue
        others = [o for o in rows if o["journey"] == r["journey"] and o is not r and o["delivered"] > 0]
        if not others or r["delivered"] <= 0:
            continue
        reasons = []
        for measure in ("opened", "clicked"):
            mean = sum(o[measure] / o["delivered"] for o in others) / len(others)
            mine = r[measure] / r["delivered"]
            if mine < GAP_ENGAGEMENT_SHARE * mean:
                reasons.append(f"{measure} {mine:.2%} against {mean:.2%} for the journey's other cells")
        if reasons:
            r["gap"], r["why"] = True, "; ".join(reasons)
    return rows


def score_rows(sums: Mapping[str | None, tuple[int, int, int]]) -> list[dict[str, Any]]:
    """Mean score at journey entry and at conversion, and their mean change, per journey (None first: every
    journey), from (conversions, sum of scores at entry, sum of scores at conversion)."""
    out = []
    for journey in sorted(sums, key=lambda j: (j is not None, j or "")):
        n, entry, won_ = sums[journey]
        out.append({"journey": journey, "conversions": n, "score_at_entry": round(entry / n, 2),
                    "score_at_conversion": round(won_ / n, 2), "change": round((won_ - entry) / n, 2)})
    if None not in sums:
        out.insert(0, {"journey": None, "conversions": 0, "score_at_entry": None, "score_at_conversion": None,
                       "change": None})
    return out


def score_now_rows(overall: tuple[int, int, int] | None, per_journey: Mapping[str, tuple[int, int, int]]
                   ) -> list[dict[str, Any]]:
    """Leads not converted: how many, their mean score at entry and now, and the mean change; the first row
    (`journey` None) over every journey, then one per journey with a lead."""
    def row(journey: str | None, cell: tuple[int, int, int] | None) -> dict[str, Any]:
        n, entry, now = cell or (0, 0, 0)
        if not n:
            return {"journey": journey, "leads": 0, "score_at_entry": None, "score_now": None, "change": None}
        return {"journey": journey, "leads": n, "score_at_entry": round(entry / n, 2), "score_now": round(now / n, 2),
                "change": round((now - entry) / n, 2)}
    return [row(None, overall), *(row(j, per_journey[j]) for j in sorted(per_journey) if per_journey[j][0])]


def path_of(entered: Mapping[str, datetime] | Mapping[str, int]) -> str | None:
    """A nurturing path: the journeys in the order first entered (ties by name), joined by `>`."""
    return ">".join(j for j, _ in sorted(entered.items(), key=lambda e: (e[1], e[0]))) or None


def path_rows(wins: Iterable[tuple[str | None, float]]) -> list[dict[str, Any]]:
    """Won deals, revenue and the average deal per nurturing path (no path, null, first)."""
    acc: dict[str | None, list[float]] = {}
    for path, amount in wins:
        cell = acc.setdefault(path, [0, 0.0])
        cell[0] += 1
        cell[1] += amount
    return [{"path": p, "deals": int(n), "revenue": round(r, 2), "average_deal": round(r / n, 2)}
            for p, (n, r) in sorted(acc.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""))]


def qualification_rows(weekly: Mapping[tuple[date, str], int]) -> list[dict[str, Any]]:
    weeks = sorted({w for w, _ in weekly})
    return [{"week": w.isoformat(), **{q: weekly.get((w, q), 0) for q in QUALIFICATION}} for w in weeks]


def bucket_points(by_day: Mapping[date, float], interval: str) -> list[dict[str, Any]]:
    points: dict[date, float] = {}
    for day, value in by_day.items():
        key = week_of(day) if interval == "week" else day
        points[key] = points.get(key, 0) + value
    return [{"t": t.isoformat(), "value": round(v, 2) if isinstance(v, float) else v}
            for t, v in sorted(points.items())]


def credit(touches: Sequence[Mapping[str, Any]], model: str) -> list[tuple[Mapping[str, Any], float]]:
    """Shares of one conversion among the touches before it (in time order): first, last, or linear."""
    if not touches:
        return []
    if model == "first":
        return [(touches[0], 1.0)]
    if model == "last":
        return [(touches[-1], 1.0)]
    share = 1.0 / len(touches)
    return [(t, share) for t in touches]


def attribution_report(conversions: Iterable[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]],
                       model: str) -> dict[str, Any]:
    """Conversions (won deals) and their revenue credited to the content engaged with before them."""
    acc: dict[str, dict[tuple[str, ...], list[float]]] = {"template": {}, "topic": {}, "format": {}}
    total, unattributed = 0, 0
    revenue = 0.0
    for deal, touched in conversions:
        total += 1
        revenue += float(deal["amount"])
        shares = credit(touched, model)
        if not shares:
            unattributed += 1
        for touch, share in shares:
            for dim in acc:
                key = (str(touch["template"]), str(touch["topic"]), str(touch["format"])) if dim == "template" \
                    else (str(touch[dim]),)
                cell = acc[dim].setdefault(key, [0.0, 0.0])
                cell[0] += share
                cell[1] += share * float(deal["amount"])
    out: dict[str, Any] = {"model": model, "conversions": total, "revenue": round(revenue, 2),
                           "unattributed": unattributed}
    out["by_template"] = [{"template": k[0], "topic": k[1], "format": k[2], "conversions": round(v[0], 4),
                           "revenue": round(v[1], 2)} for k, v in sorted(acc["template"].items())]
    for dim in ("topic", "format"):
        out[f"by_{dim}"] = [{dim: k[0], "conversions": round(v[0], 4), "revenue": round(v[1], 2)}
                            for k, v in sorted(acc[dim].items())]
    return out


def months_in(start: date, end: date) -> float:
    """The range's length in months of 30 days (the fixed monthly cost is charged pro rata)."""
    return ((end - start).days + 1) / 30


def roi_report(*, nurtured: int, sent_by_channel: Mapping[str, int], costs: Mapping[str, Any], start: date,
               end: date, influenced: float, by_journey: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    rates = costs.get("per_message", {})
    variable = sum(n * float(rates.get(ch, 0)) for ch, n in sent_by_channel.items())
    fixed = float(costs.get("fixed_monthly", 0)) * months_in(start, end)
    cost = variable + fixed
    total_sent = sum(sent_by_channel.values())
    journeys = []
    for j in by_journey:
        j_cost = sum(n * float(rates.get(ch, 0)) for ch, n in j["sent_by_channel"].items())
        j_sent = sum(j["sent_by_channel"].values())
        j_cost += fixed * (j_sent / total_sent) if total_sent else 0.0  # fixed cost shared by sends
        journeys.append({"journey": j["journey"], "nurtured_leads": j["nurtured"], "cost": round(j_cost, 2),
                         "cost_per_nurtured_lead": round(j_cost / j["nurtured"], 4) if j["nurtured"] else None,
                         "influenced_revenue": round(j["influenced"], 2),
                         "roi": round((j["influenced"] - j_cost) / j_cost, 4) if j_cost else None})
    return {"nurtured_leads": nurtured, "cost": round(cost, 2),
            "cost_per_nurtured_lead": round(cost / nurtured, 4) if nurtured else None,
            "influenced_revenue": round(influenced, 2),
            "roi": round((influenced - cost) / cost, 4) if cost else None, "by_journey": journeys}


def last_sequences(touches: Sequence[tuple[int, str]], lengths: Sequence[int] = SEQUENCE_LENGTHS
                   ) -> dict[int, tuple[str, int]]:
    """The content sequence a won deal is credited with, per length: the last `length` steps of its lead's
    touches up to the win (time in microseconds, content; in time order), consecutive repeats counted once
    (an open and a click of one message; two messages of one topic), joined by ` > `; with the time of the
    last touch of the first of those steps. A window holds all `length` steps exactly when it starts at or
    before that time (a window that cuts a step's touches still holds the step), so one row per deal serves
    every window. A length the lead engaged with fewer steps than is left out."""
    steps: list[tuple[str, int]] = []
    for ts, item in touches:
        if steps and steps[-1][0] == item:
            steps[-1] = (item, ts)
        else:
            steps.append((item, ts))
    return {length: (" > ".join(item for item, _ in steps[-length:]), steps[-length][1])
            for length in lengths if len(steps) >= length}


def first_sequences(touches: Sequence[tuple[int, str, str]], lengths: Sequence[int] = SEQUENCE_LENGTHS
                    ) -> dict[tuple[int, str], tuple[int, str]]:
    """Each content sequence a lead engaged with, once per length: its touches (time in microseconds,
    content, the lead's segment then) in time order, consecutive repeats counted once as in `last_sequences`;
    a sequence is `length` consecutive steps, first engaged with at the first touch of its last step (that
    touch's time and segment). Keyed by (length, sequence)."""
    steps: list[tuple[str, int, str]] = []
    for ts, item, segment in touches:
        if not steps or steps[-1][0] != item:
            steps.append((item, ts, segment))
    names = [s[0] for s in steps]
    out: dict[tuple[int, str], tuple[int, str]] = {}
    for length in lengths:
        for i in range(length - 1, len(steps)):
            key = (length, " > ".join(names[i - length + 1:i + 1]))
            if key not in out:
                out[key] = steps[i][1:]
    return out


def days_to_win(ts: int, wins: Sequence[int]) -> int:
    """Whole days, rounded up, from a time to the lead's first win at or after it (-1: none): a win within
    `w` days (at most `w` x 24 h later) is one whose count is at most `w`."""
    later = [w for w in wins if w >= ts]
    return -(-(min(later) - ts) // DAY_US) if later else -1


def sequence_rate_rows(cells: Mapping[tuple[str, str], tuple[int, int]]) -> list[dict[str, Any]]:
    """Per (segment, sequence): the leads that first engaged with it in range, how many of them won a deal
    within the window after, and that rate; per segment the best rate first (then the most leads)."""
    rows = [{"segment": sg, "sequence": seq, "engaged": n, "converted": c, "conversion_rate": rate(c, n)}
            for (sg, seq), (n, c) in cells.items() if n]
    return sorted(rows, key=lambda r: (r["segment"], -(r["conversion_rate"] or 0.0), -r["engaged"], r["sequence"]))


def sequence_rows(per_segment: Mapping[str, int], cells: Mapping[tuple[str, str], tuple[int, float]]
                  ) -> dict[str, Any]:
    """Won deals by (segment, content sequence before the win): conversions, their share of the segment's
    conversions in range, revenue and the average deal; the most frequent sequence of each segment first.
    `per_segment`: the deals in range per segment; `cells`: those with a sequence, (count, revenue)."""
    total = sum(per_segment.values())
    rows = [{"segment": sg, "sequence": seq, "conversions": int(n), "share": rate(n, per_segment[sg]),
             "revenue": round(r, 2), "average_deal": round(r / n, 2)}
            for (sg, seq), (n, r) in sorted(cells.items(), key=lambda kv: (kv[0][0], -kv[1][0], -kv[1][1], kv[0][1]))]
    return {"conversions": total, "without_sequence": total - sum(n for n, _ in cells.values()), "rows": rows}
