"""bench/sustained.py's pure parts: the quantile, the acknowledgement watermark, the commit time of each
entry from the poller's snapshots, and the boundedness decision, each against a brute-force recount."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable

import pytest

from bench.sustained import (
    GROWTH_FLOOR_S,
    LAG_LIMIT_S,
    AckPoller,
    boundedness,
    commit_times,
    entry_id,
    percentile,
    watermark,
)


def test_entry_ids_compare_as_numbers_not_text() -> None:
    assert entry_id(b"10-0") > entry_id("9-5")
    assert entry_id("9-10") > entry_id("9-9")
    assert entry_id("7") == (7, 0)


def test_percentile_is_the_nearest_rank() -> None:
    values = list(range(1, 101))
    random.Random(1).shuffle(values)
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([3.0], 0.99) == 3.0
    assert math.isnan(percentile([], 0.5))


def test_percentile_counts_never_committed_events_last() -> None:
    assert percentile([1.0] * 98 + [math.inf] * 2, 0.99) == math.inf
    assert percentile([1.0] * 99 + [math.inf], 0.99) == 1.0


def test_percentile_against_a_recount() -> None:
    rng = random.Random(7)
    for _ in range(200):
        values = [rng.random() for _ in range(rng.randint(1, 300))]
        q = rng.choice([0.5, 0.9, 0.99])
        got = percentile(values, q)
        # the smallest value with at least q of the values at or below it
        assert got == min(v for v in values if sum(w <= v for w in values) >= q * len(values))


def test_watermark_stops_below_the_least_pending_entry() -> None:
    assert watermark((100, 3), None) == (100, 4)  # all delivered are acknowledged
    assert watermark((100, 3), (90, 0)) == (90, 0)  # 90-0 is still pending
    # every entry below the mark is acknowledged, the pending one is not
    mark = watermark((100, 3), (90, 0))
    assert mark > (89, 9) and not mark > (90, 0)


def test_commit_times_take_the_first_snapshot_past_each_entry() -> None:
    snapshots = [(1.0, (10, 0)), (2.0, (20, 0)), (3.0, (15, 0)), (4.0, (30, 0))]
    entries = [(5, 0), (10, 0), (19, 9), (20, 0), (29, 0), (30, 0)]
    # (10,0) is not below the mark (10,0): it waits for the next one. The racing lower mark at 3.0 changes nothing.
    assert commit_times(snapshots, entries) == [1.0, 2.0, 2.0, 4.0, 4.0, math.inf]
    assert commit_times([], [(1, 0)]) == [math.inf]


def test_commit_times_against_a_recount() -> None:
    rng = random.Random(3)
    for _ in range(100):
        marks = sorted((rng.randint(0, 50), rng.randint(0, 3)) for _ in range(rng.randint(0, 20)))
        # shuffle a little: racing reads may report a lower mark later
        snapshots = [(float(i), m) for i, m in enumerate(marks)]
        if len(snapshots) > 2:
            i = rng.randrange(1, len(snapshots))
            snapshots[i] = (snapshots[i][0], snapshots[i - 1][1])
        entries = [(rng.randint(0, 55), rng.randint(0, 3)) for _ in range(30)]
        expected = []
        for e in entries:
            seen = [t for t, m in snapshots if any(m2 > e for t2, m2 in snapshots if t2 <= t)]
            expected.append(min(seen) if seen else math.inf)
        assert commit_times(snapshots, entries) == expected


def _run(lag_of: Callable[[float], float], n: int = 400, duration: float = 40.0) -> tuple[list[float], list[float]]:
    accepted = [duration * i / n for i in range(n)]
    return accepted, [lag_of(t) for t in accepted]


def test_a_steady_lag_is_bounded() -> None:
    accepted, lags = _run(lambda t: 0.3 + 0.05 * math.sin(t))
    verdict = boundedness(accepted, lags, 0.0, 40.0)
    assert verdict.bounded, verdict.why


def test_a_growing_lag_is_not_bounded_even_under_the_limit() -> None:
    accepted, lags = _run(lambda t: 0.05 * t)  # 1 s at the half, 2 s at the end: falling behind
    verdict = boundedness(accepted, lags, 0.0, 40.0)
    assert not verdict.bounded and "growing" in verdict.why


def test_noise_below_the_floor_is_not_growth() -> None:
    accepted, lags = _run(lambda t: 0.1 if t < 30 else 0.1 + GROWTH_FLOOR_S * 0.9)
    assert boundedness(accepted, lags, 0.0, 40.0).bounded


def test_a_steady_lag_over_the_limit_is_not_bounded() -> None:
    accepted, lags = _run(lambda t: LAG_LIMIT_S + 1)
    verdict = boundedness(accepted, lags, 0.0, 40.0)
    assert not verdict.bounded and ">=" in verdict.why


def test_a_high_first_half_does_not_count() -> None:
    # a warm-up spike in the first half, then steady: bounded
    accepted, lags = _run(lambda t: 8.0 if t < 10 else 0.2)
    assert boundedness(accepted, lags, 0.0, 40.0).bounded


def test_an_event_never_committed_is_not_bounded() -> None:
    accepted, lags = _run(lambda t: 0.2)
    lags[5] = math.inf
    verdict = boundedness(accepted, lags, 0.0, 40.0)
    assert not verdict.bounded and "never committed" in verdict.why


def test_too_few_events_to_judge() -> None:
    assert not boundedness([1.0], [0.1], 0.0, 40.0).bounded
    with pytest.raises(ValueError):
        boundedness([1.0, 2.0], [0.1], 0.0, 40.0)  # lags and accept times must pair up


class _SwallowsOneCancel(AckPoller):
    """A poll that, like redis-py in some windows, eats the cancellation that lands inside it."""

    swallowed = 0

    async def poll(self) -> None:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.swallowed += 1


def test_the_ack_poller_stops_though_a_poll_swallows_its_cancellation() -> None:
    async def run() -> int:
        poller = _SwallowsOneCancel("redis://127.0.0.1:1/0", 1)
        async with poller:
            await asyncio.sleep(0.02)  # inside the first poll's sleep when the exit cancels it
        return poller.swallowed

    assert asyncio.run(asyncio.wait_for(run(), 5)) == 1
