"""Sustained single posts: one event per `POST /v1/events`, as a website sends them, at a fixed rate for a
duration, against a private mesh with every consumer running. Reports the accept latency, each
consumer's lag (accept → that consumer's commit of the event), CPU per event per process, and with
`--search` the highest rate whose lag stays bounded. A raw gRPC echo rate measured in the same run is
the baseline, so the figures compare across machines. Prints figures, then one JSON line with all.

    nice -n 10 .venv/bin/python bench/sustained.py [--rate 1000] [--duration 60] [--search]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

The issue's goal (2 cores): 1,000 posts/s sustained, accept p99 < 50 ms, every consumer's lag p99 < 5 s.

How a consumer's commit of one event is observed. Every consumer (journeys, messaging, crm_sync,
analytics) reads the bus with its own Redis consumer group and acknowledges an entry only after its own
commit (nurture/bus.py): the acknowledgement is the commit, seen from outside, the same way for all four,
with no change to any service. A poller reads, every POLL_S, for each shard stream XINFO GROUPS (each
group's last-delivered-id) and then XPENDING (its smallest pending id): an entry at or below the
last-delivered id and below the smallest pending id has been delivered and acknowledged. An entry once
acknowledged stays so, so the running maximum of that watermark is the set committed by then. After the
run, the streams are read back (XRANGE) to find each posted event's entry (the bus message id is the
event id the 202 answered), and its commit time is the first poll whose watermark passed it. The
entry's id also tells when scoring's outbox put it on the bus (`published_*`: the part of every lag
spent before any consumer could see the event; it can be slightly negative, as the outbox may publish
before the 202 has travelled back through the gateway, and the id keeps whole milliseconds only). The accept
time is when the 202 arrived. Both times are this process's clock, so no clock skew enters; a lag is
overstated by at most one poll interval plus a Redis round trip, never understated. The lag includes
scoring's outbox (the event is published after it is committed). An entry dead-lettered after repeated
handler failures is acknowledged too: the run reports the dead-letter counts beside the lags, so such
an entry is not silently counted as done. Only a single Redis (not a cluster) is read this way.

Bounded: over the run's last half, lag p99 is under LAG_LIMIT_S (5 s) and not growing (the last
quarter's p99 exceeds the third quarter's by no more than max(GROWTH_FLOOR_S, GROWTH_RATIO × it): a
consumer that cannot keep up has a lag growing linearly with time, while a shared host's noise moves it
by a few hundred ms), and every event was committed by every consumer within the drain wait after the
posting stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._cpu import CpuMeter, per_event  # noqa: E402
from bench._http import LeanClient, paced  # noqa: E402
from bench._mesh import add_database_arg, database_kind, database_name, fresh_database, private_mesh  # noqa: E402
from bench.ingest import create_leads, drained, echo_rate, event  # noqa: E402
from nurture import busmessage  # noqa: E402
from nurture.bus import stream_key  # noqa: E402
from nurture.settings import load_settings  # noqa: E402

CONSUMERS = ("journeys", "messaging", "crm_sync", "analytics")
POLL_S = 0.1
BACKGROUND_S = 3.0
LAG_LIMIT_S = 5.0
GROWTH_FLOOR_S = 0.25
GROWTH_RATIO = 0.25
ACCEPT_P99_GOAL_MS = 50.0
RATE_GOAL = 1000.0

EntryId = tuple[int, int]  # a stream entry id "<ms>-<seq>", comparable


def entry_id(raw: bytes | str) -> EntryId:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-quantile (0 < q <= 1) of `values`: the smallest value with at least q of them at
    or below it; infinite values (never committed) sort last. NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def watermark(last_delivered: EntryId, min_pending: EntryId | None) -> EntryId:
    """The exclusive bound below which every entry of a stream is acknowledged by a group: delivered
    (at or below its last-delivered id) and not pending (below its smallest pending id)."""
    after_delivered = (last_delivered[0], last_delivered[1] + 1)
    return after_delivered if min_pending is None else min(after_delivered, min_pending)


def commit_times(snapshots: Sequence[tuple[float, EntryId]], entries: Sequence[EntryId]) -> list[float]:
    """For each entry, the time of the first snapshot (time, watermark) whose watermark passed it, or
    +inf. Snapshots in time order; an acknowledgement is never undone, so a later, lower watermark (a
    read that raced an earlier one) takes the running maximum."""
    times: list[float] = []
    marks: list[EntryId] = []
    for at, mark in snapshots:
        if not marks or mark > marks[-1]:
            times.append(at)
            marks.append(mark)
    out = []
    for entry in entries:
        i = bisect.bisect_right(marks, entry)  # the first watermark strictly above the entry
        out.append(times[i] if i < len(marks) else math.inf)
    return out


@dataclass
class Boundedness:
    bounded: bool
    why: str


def boundedness(accepted: Sequence[float], lags: Sequence[float], start: float, end: float,
                limit: float = LAG_LIMIT_S) -> Boundedness:
    """Whether lags (seconds; +inf: never committed) of events accepted at `accepted` (same order),
    posted from `start` to `end`, stay bounded: see the module's docstring."""
    if any(math.isinf(lag) for lag in lags):
        return Boundedness(False, f"{sum(math.isinf(lag) for lag in lags)} events never committed")
    half, quarter = start + (end - start) / 2, start + 3 * (end - start) / 4
    third = [lag for t, lag in zip(accepted, lags, strict=True) if half <= t < quarter]
    fourth = [lag for t, lag in zip(accepted, lags, strict=True) if t >= quarter]
    if not third or not fourth:
        return Boundedness(False, "too few events in the run's last half to judge")
    p99_half = percentile(third + fourth, 0.99)
    p99_third, p99_fourth = percentile(third, 0.99), percentile(fourth, 0.99)
    if p99_half >= limit:
        return Boundedness(False, f"last half's lag p99 {p99_half:.2f} s >= {limit} s")
    if p99_fourth - p99_third > max(GROWTH_FLOOR_S, GROWTH_RATIO * p99_third):
        return Boundedness(False, f"lag p99 growing: {p99_third:.2f} s then {p99_fourth:.2f} s")
    return Boundedness(True, f"last half's lag p99 {p99_half:.2f} s; quarters {p99_third:.2f} s, {p99_fourth:.2f} s")


@dataclass
class AckPoller:
    """Snapshots of every consumer group's acknowledgement watermark on every bus shard, every POLL_S."""

    redis_url: str
    shards: int
    snapshots: dict[tuple[int, str], list[tuple[float, EntryId]]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False

    async def __aenter__(self) -> AckPoller:
        import redis.asyncio as aioredis

        self._client = aioredis.from_url(self.redis_url)
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        # A flag as well as the cancel: redis-py can swallow a cancellation that lands inside a command
        # (its connection code catches it in some windows), and a loop that went on polling after it
        # held this exit, and the bench, forever (seen once: the run idle, polling every POLL_S).
        self._stopping = True
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._client.aclose()

    async def _loop(self) -> None:
        while not self._stopping:
            await self.poll()
            await asyncio.sleep(POLL_S)

    async def poll(self) -> None:
        pipe = self._client.pipeline(transaction=False)
        for shard in range(self.shards):
            # XINFO before XPENDING: an entry delivered between the two reads is then above the
            # last-delivered id read first, never taken for acknowledged.
            pipe.xinfo_groups(stream_key(shard))
            for group in CONSUMERS:
                pipe.xpending(stream_key(shard), group)
        replies = await pipe.execute(raise_on_error=False)
        at = time.perf_counter()  # after the replies: a commit is seen late, never early
        width = 1 + len(CONSUMERS)
        for shard in range(self.shards):
            groups, *pending = replies[shard * width:(shard + 1) * width]
            if isinstance(groups, Exception):
                continue
            delivered = {_text(g["name"]): entry_id(g["last-delivered-id"]) for g in groups}
            for group, summary in zip(CONSUMERS, pending, strict=True):
                if group not in delivered or isinstance(summary, Exception):
                    continue
                least = entry_id(summary["min"]) if summary.get("pending") else None
                self.snapshots.setdefault((shard, group), []).append((at, watermark(delivered[group], least)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def event_entries(redis_url: str, shards: int, wanted: set[str], since_ms: int = 0
                        ) -> dict[str, tuple[int, EntryId]]:
    """The bus entry (shard, id) of each event id in `wanted`, read back from the shard streams from
    `since_ms` (Redis's clock: an entry id's first part) on."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    found: dict[str, tuple[int, EntryId]] = {}
    try:
        for shard in range(shards):
            start = f"{since_ms}-0"
            while True:
                batch = await client.xrange(stream_key(shard), min=start, count=5000)
                if not batch:
                    break
                for raw_id, fields in batch:
                    try:
                        message = busmessage.decode(fields[b"m"])  # type: ignore[index]
                    except (KeyError, TypeError, busmessage.MalformedMessage):
                        continue
                    if message.id in wanted:
                        found[message.id] = (shard, entry_id(raw_id))  # type: ignore[arg-type]
                start = "(" + _text(batch[-1][0])  # type: ignore[arg-type]
    finally:
        await client.aclose()
    return found


async def dead_letters(redis_url: str) -> dict[str, int]:
    import redis.asyncio as aioredis

    from nurture.bus import dead_key

    client = aioredis.from_url(redis_url)
    try:
        return {group: int(await client.xlen(dead_key(group))) for group in CONSUMERS}
    finally:
        await client.aclose()


def _ms(seconds: float) -> float | None:
    """Milliseconds; None (JSON null) where the quantile falls on events never committed."""
    return round(seconds * 1000, 2) if math.isfinite(seconds) else None


async def step(lean: LeanClient, redis_url: str, shards: int, rate: float, duration: float, offset: int,
               meter: CpuMeter | None) -> dict[str, Any]:
    """One run at `rate` for `duration`, then the wait for every consumer to commit it all."""
    count = max(1, int(rate * duration))
    accepted: list[float] = [math.nan] * count
    accepted_wall: list[float] = [math.nan] * count  # the same instants on the wall clock Redis stamps entries with
    latencies: list[float] = [math.nan] * count
    ids: list[str] = [""] * count
    failures: list[str] = []

    async def one(n: int, due: float) -> None:
        try:
            status, body = await lean.post("/v1/events", event(offset + n))
        except (OSError, asyncio.IncompleteReadError) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            return
        now, wall = time.perf_counter(), time.time()
        if status != 202:
            failures.append(f"{status} {body[:200]!r}")
            return
        accepted[n], accepted_wall[n], latencies[n], ids[n] = now, wall, now - due, json.loads(body)["event_id"]

    since_ms = int(time.time() * 1000) - 1000  # a second's margin for Redis's view of the same clock
    cpu_before = meter.totals() if meter else {}
    own_before = resource.getrusage(resource.RUSAGE_SELF)
    async with AckPoller(redis_url, shards) as poller:
        start = time.perf_counter()
        await paced(count, rate, one)
        end = time.perf_counter()
        drain_timeout = max(30.0, duration)
        drain_s = await drained(redis_url, timeout=drain_timeout)
        await poller.poll()
    cpu_after = meter.totals() if meter else {}
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    ok = [n for n in range(count) if ids[n]]
    entries = await event_entries(redis_url, shards, {ids[n] for n in ok}, since_ms)
    lags: dict[str, list[float]] = {}
    for group in CONSUMERS:
        lag = [math.inf] * len(ok)
        by_shard: dict[int, list[int]] = {}
        for i, n in enumerate(ok):
            if ids[n] in entries:
                by_shard.setdefault(entries[ids[n]][0], []).append(i)
        for shard, members in by_shard.items():
            times = commit_times(poller.snapshots.get((shard, group), []),
                                 [entries[ids[ok[i]]][1] for i in members])
            for i, t in zip(members, times, strict=True):
                lag[i] = t - accepted[ok[i]]
        lags[group] = lag
    accept_ok = [accepted[n] for n in ok]
    # Accept → on the bus (scoring's outbox): an entry id's first part is the Redis host's clock, in ms,
    # when it was added; the mesh is local, so this is the same clock as time.time() here.
    published = [entries[ids[n]][1][0] / 1000 - accepted_wall[n] for n in ok if ids[n] in entries]
    verdicts = {group: boundedness(accept_ok, lags[group], start, end) for group in CONSUMERS}
    result: dict[str, Any] = {
        "rate_asked": rate,
        "rate_posted": round(len(ok) / (end - start), 1),
        "events": len(ok),
        "failed_posts": len(failures),
        "accept_p50_ms": _ms(percentile([latencies[n] for n in ok], 0.5)),
        "accept_p99_ms": _ms(percentile([latencies[n] for n in ok], 0.99)),
        **{f"lag_{g}_{q}_ms": _ms(percentile(lags[g], v)) for g in CONSUMERS for q, v in (("p50", 0.5), ("p99", 0.99))},
        "published_p50_ms": _ms(percentile(published, 0.5)),
        "published_p99_ms": _ms(percentile(published, 0.99)),
        "not_found_on_bus": len(ok) - len(entries),
        # Every bus entry (the events and the lead changes they caused) handled by every group; at the
        # timeout the next step (--search) starts on a backlog, and events not committed by then count as never.
        "drained_after_posting_s": round(drain_s, 2),
        "drain_timed_out": drain_s >= drain_timeout,
        "bounded": all(v.bounded for v in verdicts.values()),
        "bounded_why": {g: v.why for g, v in verdicts.items()},
        # The load generator shares the machine: what it took is CPU the mesh did not get (the posts, the
        # ack poller through the drain wait, the CPU meter's /proc scans, reading the streams back).
        "bench_cpu_ms_per_event": round(1000 * (own_after.ru_utime + own_after.ru_stime - own_before.ru_utime
                                                - own_before.ru_stime) / max(1, len(ok)), 3),
    }
    if meter:
        result["cpu_ms_per_event"] = per_event(cpu_before, cpu_after, len(ok))
    if failures:
        result["first_failure"] = failures[0]
    return result


def meets_goal(result: dict[str, Any]) -> bool:
    """The issue's goal: at least 1,000 posts/s, accept p99 < 50 ms, every lag p99 < 5 s and bounded."""
    lags = [result[f"lag_{g}_p99_ms"] for g in CONSUMERS]
    return bool(result["rate_posted"] >= 0.99 * RATE_GOAL and result["accept_p99_ms"] is not None
                and result["accept_p99_ms"] < ACCEPT_P99_GOAL_MS and result["bounded"]
                and all(lag is not None and lag < 1000 * LAG_LIMIT_S for lag in lags))


async def run(url: str, key: str, scoring_addr: str, mesh_token: str, redis_url: str, shards: int,
              args: argparse.Namespace, meter: CpuMeter | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        await create_leads(client)
    await drained(redis_url)  # the baseline on a quiet mesh, not beside the consumers digesting the new leads
    baseline = await echo_rate(scoring_addr, mesh_token, 5000)
    background: dict[str, float] = {}
    if meter:
        # What the mesh burns before any post, the bus drained (polling loops, timers, crm_sync still
        # pushing the new leads to the CRM): at a low rate, and over the drain wait, it is a large part
        # of the CPU per event, which this lets a reader take out.
        before = meter.totals()
        await asyncio.sleep(BACKGROUND_S)
        background = {k: round(v / BACKGROUND_S, 3) for k, v in per_event(before, meter.totals(), 1).items()}
    lean = LeanClient(url, headers)
    steps: list[dict[str, Any]] = []
    rate, offset = args.rate, 0
    try:
        while True:
            result = await step(lean, redis_url, shards, rate, args.duration, offset, meter)
            offset += result["events"]
            steps.append(result)
            print(f"rate {rate:.0f}/s: accept p99 {result['accept_p99_ms']} ms, lag p99 "
                  + ", ".join(f"{g} {result[f'lag_{g}_p99_ms']} ms" for g in CONSUMERS)
                  + f"; bounded {result['bounded']}", file=sys.stderr)
            if not args.search or not result["bounded"] or rate * args.step > args.max_rate:
                break
            rate = round(rate * args.step)
    finally:
        await lean.aclose()
    out: dict[str, Any] = {"grpc_echo_rps": round(baseline, 1), **steps[0],
                           "rate_posted / grpc_echo_rps": round(steps[0]["rate_posted"] / baseline, 3),
                           "meets_issue_goal": meets_goal(steps[0])}
    if meter:
        out["background_cpu_ms_per_s"] = background
    if args.search:
        good = [s["rate_asked"] for s in steps if s["bounded"]]
        out["search_highest_bounded_rate"] = max(good) if good else 0
        out["search_highest_bounded_rate / grpc_echo_rps"] = round((max(good) if good else 0) / baseline, 3)
        # At --max-rate with every step bounded, the highest bounded rate is a floor, not the limit.
        out["search_stopped_by"] = "lag no longer bounded" if not steps[-1]["bounded"] else "--max-rate"
        out["search_steps"] = steps
    out["dead_letters"] = await dead_letters(redis_url)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=RATE_GOAL, help="posts per second (with --search: the first)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of posting (per step with --search)")
    parser.add_argument("--search", action="store_true",
                        help="step the rate up by --step until the lag is no longer bounded")
    parser.add_argument("--step", type=float, default=1.25, help="(with --search) the factor between rates")
    parser.add_argument("--max-rate", type=float, default=20000.0, help="(with --search) stop there")
    add_database_arg(parser)
    args = parser.parse_args()
    if args.rate <= 0 or args.duration <= 0 or args.step <= 1:
        parser.error("--rate and --duration must be positive and --step above 1")
    load_start = os.getloadavg()
    with fresh_database(args.database_url) as database_url, private_mesh(database_url=database_url) as mesh:
        meter = CpuMeter(mesh.pid, database_name(database_url), database_url).start()
        try:
            shards = load_settings(mesh.env).bus_shards
            result = asyncio.run(run(mesh.url, mesh.api_key, mesh.env["NURTURE_SCORING_ADDR"],
                                     mesh.env["NURTURE_MESH_TOKEN"], mesh.env["NURTURE_REDIS_URL"], shards, args,
                                     meter))
        finally:
            meter.stop()
    result = {"database": database_kind(args.database_url), "duration_s": args.duration, **result,
              "load_average_start": [round(v, 2) for v in load_start],
              "load_average_end": [round(v, 2) for v in os.getloadavg()]}
    for name, value in result.items():
        if name != "search_steps":
            print(f"{name:44s} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
