"""Ingestion through the full path (gateway → scoring → stored, scored, traced), against a raw gRPC
echo baseline measured in the same run. Prints figures, then one JSON line with all of them.

    .venv/bin/python bench/ingest.py [--events 20000] [--url URL --api-key KEY --scoring ADDR]
                                     [--mix page_views|engagement] [--compare SERVICE]

The echo baseline is three timed rounds of 2 s (32 calls in flight, after 500 to warm up) before the
load, on the idle mesh, and three again after the consumers have drained; each side's median is printed
with the 1-minute load average beside it, and the goal's ratios use the higher of the two medians.
Beside the drain, each consumer group's own finish (`drained_after_batches_s_<group>`): the last one
decides the end-to-end rate.

`--mix engagement` posts the analytics bench's mix (sends, opens, clicks, bounces, lifecycle changes, won
deals, page views) instead of page views only. `--compare SERVICE` runs the private mesh without the
service and with it, taking turns twice in the same run, and prints both rates, their ratio, CPU ms per
event and the load average beside each (what keeping the service costs the end-to-end ingest rate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._cpu import CpuMeter, per_event  # noqa: E402
from bench._http import LeanClient  # noqa: E402
from bench._http import paced as run_paced  # noqa: E402
from bench._mesh import add_database_arg, database_kind, database_name, fresh_database, private_mesh  # noqa: E402
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc  # noqa: E402
from nurture.rpc import channel as rpc_channel  # noqa: E402


async def echo_rate(address: str, mesh_token: str, calls: int, concurrency: int = 32) -> float:
    async with rpc_channel(address, mesh_token) as channel:
        stub = scoring_pb2_grpc.EchoStub(channel)
        payload = b"x" * 200
        await stub.Echo(scoring_pb2.EchoRequest(payload=payload), timeout=5)
        todo = iter(range(calls))

        async def worker() -> None:
            for _ in todo:
                await stub.Echo(scoring_pb2.EchoRequest(payload=payload), timeout=5)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return calls / (time.perf_counter() - start)


ECHO_ROUNDS, ECHO_ROUND_S, ECHO_WARMUP_CALLS = 3, 2.0, 500


async def echo_rounds(address: str, mesh_token: str, rounds: int = ECHO_ROUNDS, seconds: float = ECHO_ROUND_S,
                      concurrency: int = 32) -> list[float]:
    """The raw gRPC echo rate (calls/s, `concurrency` in flight) in `rounds` timed rounds of `seconds`
    each, after a warm-up: one short count-based round (about 1 s at 5,000 calls/s) swung 4,200-6,100
    between runs of a quiet host, and a median of longer rounds is what the end-to-end rate is held to."""
    async with rpc_channel(address, mesh_token) as channel:
        stub = scoring_pb2_grpc.EchoStub(channel)
        request = scoring_pb2.EchoRequest(payload=b"x" * 200)
        warmup = iter(range(ECHO_WARMUP_CALLS))

        async def warm() -> None:
            for _ in warmup:
                await stub.Echo(request, timeout=5)

        await asyncio.gather(*(warm() for _ in range(concurrency)))
        async def worker(until: float) -> int:
            done = 0
            while time.perf_counter() < until:
                await stub.Echo(request, timeout=5)
                done += 1
            return done

        rates = []
        for _ in range(rounds):
            start = time.perf_counter()
            done = await asyncio.gather(*(worker(start + seconds) for _ in range(concurrency)))
            rates.append(sum(done) / (time.perf_counter() - start))
        return rates


LEADS = 500
CATEGORIES = ["pricing", "high_intent", "country", "bottom_funnel", "education"]


async def create_leads(client: httpx.AsyncClient, leads: int = LEADS) -> None:
    """The leads `event` posts for: bench-0 .. bench-<leads-1>."""
    for i in range(0, leads, 50):
        await asyncio.gather(*(client.post("/v1/leads", json={"id": f"bench-{j}", "email": f"b{j}@example.com"})
                               for j in range(i, i + 50)))


def event(n: int, leads: int = LEADS) -> dict[str, object]:
    """The n-th event of a run: a page view of one of `leads` leads, in one of the scored categories."""
    return {"lead_id": f"bench-{n % leads}", "type": "page_viewed",
            "properties": {"category": CATEGORIES[n % len(CATEGORIES)], "page": f"/p/{n}"}}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def engagement_mix(leads: int, events: int) -> list[dict[str, object]]:
    """The analytics bench's bus mix as events to post (its leads renamed to this bench's)."""
    from bench.analytics import history  # imported here: bench.analytics imports this module

    return [{"lead_id": f"bench-{m['lead_id'][1:]}", "type": m["type"], "properties": m["properties"],
             "occurred_at": m["occurred_at"]} for m in history(leads, events, seed=11)]


async def run(url: str, key: str, scoring_addr: str, mesh_token: str, events: int, redis_url: str | None = None,
              meter: CpuMeter | None = None, mix: str = "page_views") -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60,
                                 limits=httpx.Limits(max_connections=64)) as client:
        await create_leads(client)
        mixed = engagement_mix(LEADS, events) if mix == "engagement" else []

        def pick(n: int) -> dict[str, object]:
            return mixed[n % len(mixed)] if mixed else event(n)

        if redis_url:  # the baseline on a quiet mesh, not beside the consumers digesting the new leads
            await drained(redis_url)
        echo_before = await echo_rounds(scoring_addr, mesh_token)
        load_before = os.getloadavg()[0]

        # The load goes through a lean client: httpx's CPU per request would crowd the mesh out.
        lean = LeanClient(url, headers)
        # Single posts, as fast as 16 concurrent clients can go.
        singles = min(events // 4, 4000)
        latencies: list[float] = []
        counter = iter(range(singles))

        async def poster() -> None:
            for n in counter:
                t = time.perf_counter()
                status, text = await lean.post("/v1/events", pick(n))
                latencies.append(time.perf_counter() - t)
                assert status == 202, text

        cpu_at = {"start": meter.totals()} if meter else {}
        start = time.perf_counter()
        await asyncio.gather(*(poster() for _ in range(16)))
        if meter:
            cpu_at["singles"] = meter.totals()
        single_rate = singles / (time.perf_counter() - start)

        # Single posts paced at 500/s: the latency a steady site sees.
        paced: list[float] = []
        rate, seconds = 500, 4

        async def one(n: int, due: float) -> None:
            status, text = await lean.post("/v1/events", pick(n))
            paced.append(time.perf_counter() - due)
            assert status == 202, text

        cpu_before = _cpu_ticks()
        await run_paced(rate * seconds, rate, one)
        cpu = [b - a for a, b in zip(cpu_before, _cpu_ticks(), strict=True)]
        if meter:
            cpu_at["paced"] = meter.totals()

        # Batches of 1,000, two in flight.
        batches = max(2, events // 1000)
        queue = iter(range(batches))

        async def batcher() -> None:
            for b in queue:
                batch = {"events": [pick(b * 1000 + k) for k in range(1000)]}
                status, text = await lean.post("/v1/events:batch", batch)
                assert status == 202 and json.loads(text)["accepted"] == 1000, text[:300]

        start = time.perf_counter()
        await asyncio.gather(*(batcher() for _ in range(2)))
        accepted_in = time.perf_counter() - start
        batch_rate = batches * 1000 / accepted_in
        # The consumers (journeys, messaging, crm_sync) work behind the accept path: how long until
        # every one of them has handled everything, i.e. the end-to-end rate of the whole mesh.
        finished: dict[str, float] = {}
        drain = await drained(redis_url, finished=finished) if redis_url else None
        if meter:
            cpu_at["batches"] = meter.totals()
        await lean.aclose()
        # The baseline again, the mesh quiet once more: the host's load moves between the two, and the
        # goal is held to the higher of the two medians (never the lower).
        echo_after = await echo_rounds(scoring_addr, mesh_token)
        load_after = os.getloadavg()[0]
    before, after = statistics.median(echo_before), statistics.median(echo_after)
    baseline = max(before, after)
    cpu_report = {}
    if meter:
        # CPU per event by process (load-independent, unlike the latencies): where an event's cost goes.
        # A phase's consumers may still be catching up in the next one; "all" (to the drain) has no such spill.
        phases = {"singles": ("start", "singles", singles), "paced": ("singles", "paced", rate * seconds),
                  "batches": ("paced", "batches", batches * 1000),
                  "all": ("start", "batches", singles + rate * seconds + batches * 1000)}
        for phase, (since, until, count) in phases.items():
            costs = per_event(cpu_at[since], cpu_at[until], count)
            print(f"CPU ms per event, {phase}: "
                  + ", ".join(f"{k} {v}" for k, v in costs.items()), file=sys.stderr)
            cpu_report[f"cpu_ms_per_event_{phase}"] = costs["total"]
        for name, ms in per_event(cpu_at["start"], cpu_at["batches"], singles + rate * seconds + batches * 1000
                                  ).items():
            if name != "total":
                cpu_report[f"cpu_ms_per_event_all_{name}"] = ms
    extra = {} if drain is None else {
        "consumers_drained_after_batches_s": round(drain, 2),
        "end_to_end_batch_events_per_s": round(batches * 1000 / (accepted_in + drain), 1),
        "end_to_end / grpc_echo_rps": round(batches * 1000 / (accepted_in + drain) / baseline, 3),
        **{f"drained_after_batches_s_{name}": at for name, at in sorted(finished.items())}}
    return {
        # The higher of the two medians: before the load (the mesh idle) and after the drain.
        "grpc_echo_rps": round(baseline, 1),
        "grpc_echo_rps_before": round(before, 1),
        "grpc_echo_rps_after": round(after, 1),
        "grpc_echo_rounds_before": [round(r) for r in echo_before],
        "grpc_echo_rounds_after": [round(r) for r in echo_after],
        "load_average_1m_at_echo_before": round(load_before, 2),
        "load_average_1m_at_echo_after": round(load_after, 2),
        "single_events_per_s": round(single_rate, 1),
        "single_p50_ms": round(pct(latencies, 0.5), 2),
        "single_p99_ms": round(pct(latencies, 0.99), 2),
        "paced_500_per_s_p50_ms": round(statistics.median(paced) * 1000, 2),
        "paced_500_per_s_p99_ms": round(pct(paced, 0.99), 2),
        # The machine during the paced phase: how much of its CPU was idle, and how much the
        # hypervisor took (steal), for reading the latency figures of a shared host (-1: no /proc/stat).
        "paced_cpu_idle_pct": round(100 * cpu[3] / max(1, sum(cpu)), 1) if cpu else -1.0,
        "paced_cpu_steal_pct": round(100 * cpu[7] / max(1, sum(cpu)), 1) if len(cpu) > 7 else -1.0,
        "batch_events_per_s": round(batch_rate, 1),
        "batch_events_per_s / grpc_echo_rps": round(batch_rate / baseline, 3),
        **extra,
        **cpu_report,
    }


def _cpu_ticks() -> list[int]:
    """The machine's CPU time by state (/proc/stat: user nice system idle iowait irq softirq steal)."""
    try:
        with open("/proc/stat") as fh:
            return [int(v) for v in fh.readline().split()[1:]]
    except OSError:
        return []


async def drained(redis_url: str, timeout: float = 600.0, finished: dict[str, float] | None = None) -> float:
    """Seconds until every consumer group of every bus shard has read and acknowledged all. `finished`,
    when given, receives each group's own time: the first poll that found it caught up on every shard
    (the consumer that finishes last decides the end-to-end rate)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < timeout:
            behind: dict[str, int] = {}
            async for key in client.scan_iter(match="nurture:bus:{s*}"):
                last = (await client.xinfo_stream(key))["last-generated-id"]
                for group in await client.xinfo_groups(key):
                    name = group["name"].decode() if isinstance(group["name"], bytes) else str(group["name"])
                    behind[name] = (behind.get(name, 0) + int(group["pending"])
                                    + (group["last-delivered-id"] != last))
            if finished is not None:
                for name, count in behind.items():
                    if not count and name not in finished:
                        finished[name] = round(time.perf_counter() - start, 2)
                    elif count:
                        finished.pop(name, None)  # caught up once, then behind again: not finished
            if not any(behind.values()):
                break
            await asyncio.sleep(0.2)
        return time.perf_counter() - start
    finally:
        await client.aclose()


def in_private_mesh(without: tuple[str, ...], database_url: str | None, events: int, mix: str
                    ) -> dict[str, Any]:
    with fresh_database(database_url) as url, private_mesh(database_url=url, without=without) as mesh:
        meter = CpuMeter(mesh.pid, database_name(url), url).start()
        try:
            return asyncio.run(run(mesh.url, mesh.api_key, mesh.env["NURTURE_SCORING_ADDR"],
                                   mesh.env["NURTURE_MESH_TOKEN"], events, mesh.env["NURTURE_REDIS_URL"], meter,
                                   mix))
        finally:
            meter.stop()


def compare(service: str, without: tuple[str, ...], database_url: str | None, events: int, mix: str
            ) -> dict[str, float]:
    """The mesh without `service` and with it, in turns (without, with, twice) so the neighbours' load
    falls on both alike: the better end-to-end rate of each, their ratio, and the CPU per event (which the
    load does not move) of each, with the 1-minute load average after every run."""
    out: dict[str, float] = {}
    for label, off in ((f"without_{service}", (*without, service)), (f"with_{service}", without)) * 2:
        got = in_private_mesh(off, database_url, events, mix)
        rate, cpu = got.get("end_to_end_batch_events_per_s", 0.0), got.get("cpu_ms_per_event_all", 0.0)
        load = round(os.getloadavg()[0], 2)
        print(f"{label}: end to end {rate}/s, CPU {cpu} ms per event, load average {load}", file=sys.stderr)
        key = f"{label}_end_to_end_events_per_s"
        if rate >= out.get(key, 0.0):
            out[key], out[f"{label}_load_average_1m"] = rate, load
        out[f"{label}_cpu_ms_per_event"] = min(cpu, out.get(f"{label}_cpu_ms_per_event", cpu))
        own = got.get(f"cpu_ms_per_event_all_{service}", 0.0)
        if own and cpu:  # the service's own part of the mesh's CPU: steadier than the two totals' ratio
            out[f"{service}_cpu_share_of_mesh"] = round(max(own / cpu, out.get(f"{service}_cpu_share_of_mesh", 0.0)), 4)
    with_, without_ = f"with_{service}", f"without_{service}"
    if out[f"{without_}_end_to_end_events_per_s"]:
        out[f"{with_} / {without_} end to end"] = round(
            out[f"{with_}_end_to_end_events_per_s"] / out[f"{without_}_end_to_end_events_per_s"], 3)
    if out[f"{without_}_cpu_ms_per_event"]:
        out[f"{with_} / {without_} cpu per event"] = round(
            out[f"{with_}_cpu_ms_per_event"] / out[f"{without_}_cpu_ms_per_event"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--url")
    parser.add_argument("--api-key", default=os.environ.get("NURTURE_API_KEY", ""),
                        help="(with --url) the printed key; default NURTURE_API_KEY")
    parser.add_argument("--mesh-token", default=os.environ.get("NURTURE_MESH_TOKEN", ""),
                        help="(with --url) mesh_token of <data>/secrets.json; default NURTURE_MESH_TOKEN")
    parser.add_argument("--scoring", default="127.0.0.1:50051")
    parser.add_argument("--without", action="append", default=[], metavar="SERVICE",
                        help="run the private mesh without this service (repeatable), to see what it costs")
    parser.add_argument("--redis", help="the mesh's Redis URL, to wait for the consumers (with --url)")
    parser.add_argument("--mix", choices=("page_views", "engagement"), default="page_views")
    parser.add_argument("--compare", metavar="SERVICE",
                        help="run without and with this service, twice each in turn, and print the ratio")
    add_database_arg(parser)
    args = parser.parse_args()
    result: dict[str, Any]
    if args.url:
        result = asyncio.run(run(args.url, args.api_key, args.scoring, args.mesh_token, args.events, args.redis,
                                 mix=args.mix))
    elif args.compare:
        result = compare(args.compare, tuple(args.without), args.database_url, args.events, args.mix)
    else:
        result = in_private_mesh(tuple(args.without), args.database_url, args.events, args.mix)
    result = {"database": database_kind(args.database_url), "mix": args.mix, **result}
    for name, value in result.items():
        print(f"{name:40s} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
