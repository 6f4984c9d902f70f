"""The website collect endpoint (`POST /t/v1/collect`: site key, origin, bot and privacy filters, Redis
rate limits, appended to the collect stream, then stored and scored by scoring against each anonymous
visitor's profile) against a raw gRPC echo baseline measured in the same run. Prints figures, then one
JSON line with all of them.

    .venv/bin/python bench/collect.py [--requests 6000] [--database-url URL]

Two loads, each from 16 concurrent clients over many visitors: one event per request (a page view as
the snippet sends it on load) and a page's worth of events per request (the snippet's queue flushed
together). `collect_events_per_s / grpc_echo_rps` is the goal figure (>= 1.0) for single events: the
rate the gateway answers at. `collect_stored_events_per_s` counts until scoring has stored them all, and
the CPU figures per event include that work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._http import LeanClient  # noqa: E402
from bench._mesh import add_database_arg, database_kind, fresh_database, private_mesh  # noqa: E402
from bench.ingest import drained, echo_rate  # noqa: E402

ORIGIN = "https://bench.example"
AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
CATEGORIES = ["pricing", "country", "education", "high_intent", "credentials"]


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (/proc: load-independent)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / os.sysconf("SC_CLK_TCK")


def _name(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in args if a]
    module = next((w for w in words if w.startswith(("services.", "gateway"))), "")
    return module.removeprefix("services.") or Path(words[0]).name if words else "?"


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


async def load(url: str, key: str, requests: int, per_request: int, tag: str) -> tuple[float, int]:
    """(events per second accepted, requests refused): 16 clients, a visitor per 20 requests."""
    client = LeanClient(url, {"Origin": ORIGIN, "User-Agent": AGENT})
    todo = iter(range(requests))
    refused = 0

    async def worker() -> None:
        nonlocal refused
        for n in todo:
            events = [{"id": f"{tag}-{n}-{k}", "type": "page_viewed",
                       "properties": {"page": f"/p/{n % 97}", "category": CATEGORIES[(n + k) % len(CATEGORIES)]}}
                      for k in range(per_request)]
            status, text = await client.post(f"/t/v1/collect?k={key}",
                                             {"visitor_id": f"bench-{tag}-{n // 20:08d}-visitor", "events": events})
            if status != 202 or json.loads(text)["accepted"] != per_request:
                refused += 1
                if refused < 3:
                    print(f"refused: {status} {text[:300]!r}", file=sys.stderr)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(16)))
    elapsed = time.perf_counter() - start
    await client.aclose()
    return (requests - refused) * per_request / elapsed, refused


async def stored(redis_url: str, timeout: float = 600.0) -> None:
    """Until scoring has stored every collected event (the collect stream holds only what it has not)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < timeout:
            left = 0
            async for key in client.scan_iter(match="nurture:t:collect:{s*}"):
                left += await client.xlen(key)
            if not left:
                return
            await asyncio.sleep(0.02)
        raise SystemExit("scoring did not store the collected events in time")
    finally:
        await client.aclose()


async def run(url: str, key: str, scoring_addr: str, mesh_token: str, requests: int, redis_url: str,
              mesh_pid: int) -> dict[str, float | int]:
    await load(url, key, 200, 1, "warm")
    await stored(redis_url)
    await drained(redis_url)
    baseline = await echo_rate(scoring_addr, mesh_token, 5000)
    pids = _children(mesh_pid)
    cpu_before = {pid: _cpu_seconds([pid]) for pid in pids}
    start = time.perf_counter()
    single_rate, single_refused = await load(url, key, requests, 1, "one")
    # Answered is not yet stored: the figures that count scoring's work wait until it has stored them all.
    await stored(redis_url)
    stored_rate = (requests - single_refused) / (time.perf_counter() - start)
    by_process = {pid: _cpu_seconds([pid]) - before for pid, before in cpu_before.items()}
    cpu_single = sum(by_process.values())
    accepted = max(1, requests - single_refused)
    split = {f"cpu_ms_per_event.{_name(pid)}": round(1000 * cpu / accepted, 3)
             for pid, cpu in sorted(by_process.items(), key=lambda kv: -kv[1]) if cpu > 0}
    page_rate, page_refused = await load(url, key, max(200, requests // 10), 10, "page")
    return {
        "grpc_echo_rps": round(baseline, 1),
        "collect_events_per_s": round(single_rate, 1),
        "collect_events_per_s / grpc_echo_rps": round(single_rate / baseline, 3),
        "collect_stored_events_per_s": round(stored_rate, 1),
        "collect_stored / grpc_echo_rps": round(stored_rate / baseline, 3),
        "collect_mesh_cpu_ms_per_event": round(1000 * cpu_single / accepted, 3),
        **split,
        "collect_10_per_request_events_per_s": round(page_rate, 1),
        "collect_10_per_request / grpc_echo_rps": round(page_rate / baseline, 3),
        "refused": single_refused + page_refused,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--without", action="append", default=[], metavar="SERVICE",
                        help="run the private mesh without this service (repeatable): anonymous visitors' events "
                             "reach no bus consumer, so the collect path does not need them")
    add_database_arg(parser)
    args = parser.parse_args()
    key = "bench_" + secrets.token_urlsafe(24)
    # The bench's own site key, with limits no load here reaches (the limits' cost is still paid).
    os.environ["NURTURE_SITE_KEYS"] = json.dumps({key: {"origins": [ORIGIN], "rate_per_s": 1_000_000,
                                                        "visitor_per_min": 100_000}})
    with fresh_database(args.database_url) as database_url, \
            private_mesh(database_url=database_url, without=tuple(args.without)) as mesh:
        result = asyncio.run(run(mesh.url, key, mesh.env["NURTURE_SCORING_ADDR"], mesh.env["NURTURE_MESH_TOKEN"],
                                 args.requests, mesh.env["NURTURE_REDIS_URL"], mesh.pid))
    result = {"database": database_kind(args.database_url), "without": sorted(args.without), **result}
    for name, value in result.items():
        print(f"{name:45s} {value}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
