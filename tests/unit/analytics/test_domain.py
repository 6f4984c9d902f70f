"""The reports' arithmetic at its boundaries: percentiles from histograms, dwell, bottlenecks, credit."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from services.analytics.domain import reports
from services.analytics.domain.facts import from_bus


def test_median_and_p90_of_a_histogram_equal_those_of_the_values() -> None:
    rnd = random.Random(1)
    for _ in range(300):
        values = [rnd.randrange(0, 40) for _ in range(rnd.randint(1, 30))]
        hist = Counter(values)
        assert reports.median(hist) == statistics.median(values)
        assert reports.p90(hist) == sorted(values)[math.ceil(0.9 * len(values)) - 1]
    assert reports.median({}) is None and reports.p90({}) is None
    assert reports.median({10: 1, 20: 1}) == 15  # an even count: the mean of the two middle values


def test_dwell_is_whole_minutes_rounded_down_and_never_negative() -> None:
    t = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    assert reports.dwell_minutes(t, t + timedelta(seconds=59.999)) == 0
    assert reports.dwell_minutes(t, t + timedelta(seconds=60)) == 1
    assert reports.dwell_minutes(t, t - timedelta(hours=3)) == 0  # a late event: no time, not negative


def test_a_fact_belongs_to_its_utc_day() -> None:
    assert reports.day_of(datetime(2026, 3, 2, 23, 59, 59, tzinfo=UTC)) == date(2026, 3, 2)
    athens = datetime(2026, 3, 3, 1, 0, tzinfo=ZoneInfo("Europe/Athens"))  # 23:00 UTC the day before
    assert reports.day_of(athens) == date(2026, 3, 2)
    assert reports.week_of(date(2026, 3, 8)) == date(2026, 3, 2)  # Sunday → the Monday before


def _stages(convs: dict[str, tuple[int, int]], dwell: dict[str, dict[int, int]] | None = None) -> dict[str, dict]:
    rows = reports.stage_rows({("j", s): v for s, v in convs.items()},
                             {("j", s): (reports.median(h), reports.p90(h)) for s, h in (dwell or {}).items()})
    return {r["stage"]: r for r in rows}


def test_a_stage_converting_below_half_the_others_mean_is_a_bottleneck_and_at_half_is_not() -> None:
    # others: 0.8 and 0.6 → mean 0.7, half 0.35
    at_half = _stages({"a": (100, 80), "b": (100, 60), "c": (100, 35)})
    assert not at_half["c"]["bottleneck"]
    below = _stages({"a": (100, 80), "b": (100, 60), "c": (100, 34)})
    assert below["c"]["bottleneck"] and "conversion 34.00% against 70.00%" in below["c"]["why"]
    assert not below["a"]["bottleneck"] and not below["b"]["bottleneck"]


def test_a_stage_dwelling_over_twice_the_others_median_is_a_bottleneck() -> None:
    convs = {"a": (10, 5), "b": (10, 5), "c": (10, 5)}
    twice = _stages(convs, {"a": {60: 1}, "b": {180: 1}, "c": {240: 1}})  # others' mean 120, c = 240
    assert not twice["c"]["bottleneck"]
    over = _stages(convs, {"a": {60: 1}, "b": {180: 1}, "c": {241: 1}})
    assert over["c"]["bottleneck"] and "median dwell" in over["c"]["why"]


def test_a_stage_no_lead_has_left_is_not_compared() -> None:
    rows = _stages({"a": (100, 80), "b": (100, 70), "end": (100, 0)})
    assert not rows["end"]["bottleneck"] and rows["end"]["conversion_rate"] == 0


def test_credit_first_last_linear() -> None:
    touches = [{"n": 1}, {"n": 2}, {"n": 3}]
    assert reports.credit(touches, "first") == [(touches[0], 1.0)]
    assert reports.credit(touches, "last") == [(touches[2], 1.0)]
    assert [share for _, share in reports.credit(touches, "linear")] == [1 / 3] * 3
    assert reports.credit([], "linear") == []


def test_the_adapter_keeps_what_reports_need_and_drops_the_rest() -> None:
    lead = {"id": "L1", "segment": "family", "created_at": "2026-03-01T00:00:00Z"}
    props = {"message_id": "m1", "journey": "family", "stage": "welcome", "template": "family.email_01",
             "topic": "schools", "format": "guide"}
    sent = from_bus({"id": "e1", "lead_id": "L1", "type": "email_sent", "occurred_at": "2026-03-02T08:00:00Z",
                     "lead": lead, "properties": props})
    assert sent is not None and (sent.kind, sent.segment, sent.message_id, sent.stage, sent.topic, sent.format,
                                 sent.channel) == ("sent", "family", "m1", "welcome", "schools", "guide", "email")
    won = from_bus({"id": "e2", "lead_id": "L1", "type": "opportunity_won", "occurred_at": "2026-03-03T08:00:00Z",
                    "lead": lead, "properties": {"amount": "-5"}})
    assert won is not None and won.amount == 0.0  # a negative amount never reduces revenue
    assert from_bus({"id": "e3", "lead_id": "L1", "type": "page_viewed", "occurred_at": "2026-03-03T08:00:00Z",
                     "lead": lead, "properties": {}}) is None
    assert from_bus({"id": "e4", "lead_id": "L1", "type": "email_sent", "lead": lead, "properties": {}}) is None
    # A score change is the lead's score now (its snapshot's); one whose snapshot has no score says nothing.
    change = {"id": "e5:score", "lead_id": "L1", "type": "score_changed", "occurred_at": "2026-03-03T09:00:00Z",
              "properties": {"old": 10, "new": 25}}
    score = from_bus({**change, "lead": {**lead, "score": 25}})
    assert score is not None and (score.kind, score.score, score.segment) == ("score", 25, "family")
    assert from_bus({**change, "lead": lead}) is None
    assert from_bus({**change, "lead": {**lead, "score": True}}) is None


def test_periods_cover_every_day_of_a_range_once_coarsest_first() -> None:
    start = date(2026, 1, 1)
    for offset in range(0, 70, 3):
        for length in (0, 1, 6, 7, 13, 31, 45, 95):
            a = start + timedelta(days=offset)
            b = a + timedelta(days=length)
            covered: list[date] = []
            listed: list[tuple[str, date]] = []
            for grain, lo, hi in reports.periods(a, b):
                p = lo
                while p <= hi:
                    step = {"d": timedelta(days=1), "w": timedelta(days=7)}.get(grain)
                    nxt = (p.replace(day=28) + timedelta(days=4)).replace(day=1) if step is None else p + step
                    covered.extend(p + timedelta(days=i) for i in range((nxt - p).days))
                    assert reports.period_starts(p)[{"d": 0, "w": 1, "m": 2}[grain]] == (grain, p)
                    listed.append((grain, p))
                    p = nxt
            assert covered == [a + timedelta(days=i) for i in range(length + 1)], (a, b)
            assert reports.period_list(a, b) == listed, (a, b)  # each period by itself
    assert [g for g, _, _ in reports.periods(date(2026, 3, 1), date(2026, 5, 31))] == ["m"]


def test_bands_are_monotone_and_narrow() -> None:
    bands = [reports.band(m) for m in range(0, 200_000)]
    assert bands == sorted(bands)
    assert reports.band(-5) == reports.band(0)
    widths: dict[int, int] = {}
    for b in bands:
        widths[b] = widths.get(b, 0) + 1
    assert max(bands) < 40 and all(w <= 0.5 * (1 << (b // 2)) + 1 for b, w in widths.items())


def test_sub_bands_partition_each_band_into_narrow_runs_of_minutes() -> None:
    runs: dict[int, list[int]] = {}
    for m in range(0, (1 << 19) - 1):  # every minute of the bands below 2**19 - 1
        runs.setdefault(reports.sub_band(m), []).append(m)
    for first, minutes in runs.items():
        # a run of consecutive minutes, named by its first, ending where sub_band_last says, in one band
        assert minutes == list(range(first, reports.sub_band_last(first) + 1)), first
        assert reports.band(first) == reports.band(reports.sub_band_last(first))
    per_band: dict[int, int] = {}
    for first in runs:
        per_band[reports.band(first)] = per_band.get(reports.band(first), 0) + 1
    assert max(per_band.values()) == 1 << reports.SUB_BITS  # a wide band is narrowed 32-fold
    assert reports.sub_band(-5) == reports.sub_band(0) == 0
    assert reports.sub_band(40) == 40 and reports.sub_band_last(40) == 40  # below 64 minutes: each minute
    assert reports.sub_band_last(reports.sub_band(30_000)) - reports.sub_band(30_000) == 255


def test_a_sequence_is_the_last_pieces_of_content_with_repeats_counted_once() -> None:
    def last(items: list[str], length: int) -> str | None:
        got = reports.last_sequences(list(enumerate(items)), (length,))
        return got[length][0] if length in got else None

    assert last(["a", "a", "b", "b", "c"], 2) == "b > c"
    assert last(["a", "b", "a"], 3) == "a > b > a"  # a return to earlier content is a step
    assert last(["a", "a", "a"], 2) is None  # one piece engaged with twice is not a sequence
    assert last([], 2) is None
    got = reports.sequence_rows({"s": 3, "t": 1}, {("s", "a > b"): (2, 30.0), ("t", "b > c"): (1, 1.0)})
    assert got == {"conversions": 4, "without_sequence": 1, "rows": [
        {"segment": "s", "sequence": "a > b", "conversions": 2, "share": round(2 / 3, 4), "revenue": 30.0,
         "average_deal": 15.0},
        {"segment": "t", "sequence": "b > c", "conversions": 1, "share": 1.0, "revenue": 1.0, "average_deal": 1.0}]}


def test_a_deals_sequence_is_in_a_window_that_starts_by_its_first_steps_last_touch() -> None:
    """One row per deal serves every window: a window cut inside a step's touches still holds the step, so
    what decides is the time of the last touch of the sequence's first step."""
    touches = [(10, "a"), (20, "b"), (30, "b"), (40, "c"), (50, "c")]
    got = reports.last_sequences(touches)
    assert got == {2: ("b > c", 30), 3: ("a > b > c", 10)}
    for start in range(0, 60, 5):  # the brute force: the touches from `start` on, repeats once
        steps = [item for i, (ts, item) in enumerate(touches) if ts >= start
                 and not (i and touches[i - 1][0] >= start and touches[i - 1][1] == item)]
        for length, (sequence, cut) in got.items():
            held = len(steps) >= length and " > ".join(steps[-length:]) == sequence
            assert held == (start <= cut), (start, length)
