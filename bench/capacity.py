"""What one lead, one event, one timer and one message cost: CPU per item for each service, Redis bytes per
lead, per pending timer and per bus entry, SQL rows and bytes per lead per day. The figures behind
docs/CAPACITY.md.

A private mesh (`nurture up`, virtual clock) gets `--leads` leads (email consent, a time zone), then for
each of `--days` virtual days: every lead's events of that day are posted (a mix of the playbook's
entry events: page views in the scored categories, which set a segment and enrol the lead in its
journey; assessments, checkouts and webinar registrations; purchases), the bus is drained, and the
clock is advanced a day, which settles every service at each due time (timers fire, journeys step,
messaging renders and sends to the local SMTP sink). CPU is read per process from /proc (bench._cpu:
on PostgreSQL its backends too, by application_name) around each phase:

- `cpu_ms_per_event`: every process's CPU while the day's events are posted and drained, per event
  (it includes what an event causes at once: a journey entered, its first email sent);
- `cpu_ms_per_timer`: journeys' CPU while the clock advances, per journey step run written then (each
  run there is the work of a timer that came due: a wait ending, and the steps after it);
- `cpu_ms_per_message`: messaging's CPU over the whole run, per message sent.

Then the stores are measured: Redis by MEMORY USAGE of every key (SAMPLES 0: exact), grouped into a
lead's own keys (hash tag `{<lead id>}`), the timer shards and the bus streams, per lead, per pending
timer (ZCARD) and per stream entry (XLEN), with INFO's used_memory; SQL per table, rows and bytes (SQLite:
dbstat pages, each index counted with its table; PostgreSQL: pg_total_relation_size), per lead and per
lead per day. Prints figures, then one JSON line.

    nice -n 10 .venv/bin/python bench/capacity.py [--leads 1000] [--days 3]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._cpu import CpuMeter  # noqa: E402
from bench._mesh import add_database_arg, database_kind, database_name, fresh_database, private_mesh  # noqa: E402
from bench.ingest import CATEGORIES, drained  # noqa: E402
from nurture import times  # noqa: E402
from nurture.settings import SERVICES  # noqa: E402

TIMEZONES = ["America/Toronto", "Europe/Lisbon", "Asia/Kolkata", "America/Vancouver", "Europe/Berlin"]
# A day's events per lead: (type, share of leads that send it on a given day, properties). Page views
# dominate, as on a site; the rest are the playbook's other entry and exit events.
DAILY_MIX: list[tuple[str, float]] = [
    ("page_viewed", 0.60), ("page_viewed", 0.30),
    ("assessment_completed", 0.02), ("checkout_started", 0.02), ("webinar_registered", 0.02),
    ("purchased", 0.005),
]
IDLE_S = 10.0


def day_events(leads: int, day: int, rnd: random.Random) -> list[dict[str, Any]]:
    """The events of one virtual day, lead by lead (each lead's in its order), then shuffled across leads
    only (a lead's own events keep their order as posted one at a time)."""
    out: list[dict[str, Any]] = []
    for lead in range(leads):
        for kind, share in DAILY_MIX:
            if rnd.random() < share:
                props: dict[str, Any] = {"page": f"/p/{rnd.randrange(500)}"}
                if kind == "page_viewed":
                    # A lead keeps to its interest mostly, so segments settle and journeys run their course.
                    props["category"] = CATEGORIES[(lead + (day if rnd.random() < 0.2 else 0)) % len(CATEGORIES)]
                out.append({"lead_id": f"cap-{lead}", "type": kind, "properties": props})
    return out


async def post_all(client: httpx.AsyncClient, events: list[dict[str, Any]], concurrency: int = 64) -> int:
    """Post every event (single posts, `concurrency` at a time); how many were accepted."""
    todo = iter(events)
    accepted = 0

    async def worker() -> None:
        nonlocal accepted
        for body in todo:
            r = await client.post("/v1/events", json=body)
            if r.status_code == 202:
                accepted += 1
            else:
                print(f"refused: {r.status_code} {r.text[:200]}", file=sys.stderr)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return accepted


async def create_leads(client: httpx.AsyncClient, leads: int) -> None:
    for i in range(0, leads, 50):
        replies = await asyncio.gather(*(client.post("/v1/leads", json={
            "id": f"cap-{j}", "email": f"cap{j}@example.com", "consent": {"email": True},
            "timezone": TIMEZONES[j % len(TIMEZONES)]}) for j in range(i, min(leads, i + 50))))
        bad = [r for r in replies if r.status_code not in (200, 201)]
        if bad:
            raise RuntimeError(f"lead creation refused: {bad[0].status_code} {bad[0].text[:300]}")


def _engines(data_dir: str, url: str | None) -> dict[str, sa.Engine]:
    if url:
        return {"all": sa.create_engine(url, poolclass=sa.pool.NullPool)}
    return {s: sa.create_engine(f"sqlite:///{Path(data_dir) / f'{s}.db'}", poolclass=sa.pool.NullPool)
            for s in SERVICES if (Path(data_dir) / f"{s}.db").exists()}


def count(engines: dict[str, sa.Engine], table: str, where: str = "") -> int:
    """Rows of `table` (on SQLite, in the file of the service its name starts with)."""
    service = "all" if "all" in engines else next(s for s in SERVICES if table.startswith(f"{s}_"))
    with engines[service].connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table} {where}")).scalar_one())


def sql_tables(engines: dict[str, sa.Engine]) -> dict[str, tuple[int, int]]:
    """Table → (rows, bytes with its indexes and TOAST)."""
    out: dict[str, tuple[int, int]] = {}
    for engine in engines.values():
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                owner: dict[str, str] = dict(conn.execute(sa.text("SELECT name, tbl_name FROM sqlite_master "
                                                  "WHERE type IN ('table', 'index')")).all())
                sizes: Counter[str] = Counter()
                for name, size in conn.execute(sa.text("SELECT name, sum(pgsize) FROM dbstat GROUP BY name")):
                    sizes[owner.get(name, name)] += int(size)
                for table, size in sizes.items():
                    if table.startswith("sqlite_"):
                        continue
                    rows = int(conn.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar_one())
                    out[table] = (rows, size)
            else:
                conn.execute(sa.text("ANALYZE"))
                for table, size in conn.execute(sa.text(
                        "SELECT relname, pg_total_relation_size(relid) FROM pg_stat_user_tables")):
                    rows = int(conn.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar_one())
                    out[str(table)] = (rows, int(size))
    return out


def redis_figures(url: str, leads: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    try:
        groups: Counter[str] = Counter()
        keys: Counter[str] = Counter()
        timers = entries = 0
        for key in client.scan_iter(count=1000):
            name = key.decode()
            size = int(client.memory_usage(key, samples=0) or 0)
            if name.startswith("nurture:bus:"):
                kind = "bus streams"
                entries += int(client.xlen(key))
            elif name.startswith("nurture:timers:"):
                kind = "timer shards"
                timers += int(client.zcard(key))
            elif "{cap-" in name:
                kind = "lead keys"
            else:
                kind = "other: " + name.split("{", 1)[0].rstrip(":")
            groups[kind] += size
            keys[kind] += 1
        info = client.info("memory")
    finally:
        client.close()
    return {
        "used_memory": int(info["used_memory"]),
        "bytes_by_kind": dict(groups), "keys_by_kind": dict(keys),
        "bytes_per_lead": round(groups["lead keys"] / max(1, leads), 1),
        "pending_timers": timers,
        "bytes_per_pending_timer": round(groups["timer shards"] / timers, 1) if timers else None,
        "bus_entries": entries,
        "bytes_per_bus_entry": round(groups["bus streams"] / entries, 1) if entries else None,
    }


async def advance_to(client: httpx.AsyncClient, target: datetime) -> None:
    """Advance the virtual clock to `target`. A settle that outlives its deadline on a loaded host is a 503
    after part of the walk; asking again for the same instant goes on from where it stopped."""
    for _ in range(20):
        r = await client.post("/v1/admin/clock/advance", json={"to": times.rfc3339(target)})
        if r.status_code == 200:
            return
        print(f"advance: {r.status_code} {r.text[:200]}; again", file=sys.stderr, flush=True)
        await asyncio.sleep(1)
    r.raise_for_status()


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}


async def drive(mesh_url: str, key: str, redis_url: str, meter: CpuMeter, engines: dict[str, sa.Engine],
                leads: int, days: int, seed: int) -> dict[str, Any]:
    rnd = random.Random(seed)
    cpu_events: Counter[str] = Counter()
    cpu_advance: Counter[str] = Counter()
    events = runs_in_advance = 0
    wall: dict[str, float] = defaultdict(float)  # seconds spent in each kind of phase (idle CPU accrues in them too)
    async with httpx.AsyncClient(base_url=mesh_url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        start = times.parse_utc((await client.get("/v1/admin/clock")).json()["now"])
        assert start is not None
        before = meter.totals()
        await create_leads(client, leads)
        await advance_to(client, start)
        await drained(redis_url)
        cpu_leads = delta(meter.totals(), before)
        # What the mesh spends doing nothing (polling loops, sweeps), counted inside every phase below.
        before = meter.totals()
        await asyncio.sleep(IDLE_S)
        idle = delta(meter.totals(), before)
        for day in range(days):
            batch = day_events(leads, day, rnd)
            before, t0 = meter.totals(), time.perf_counter()
            events += await post_all(client, batch)
            # Under the virtual clock the consumers handle the bus when the mesh is settled (waiting for
            # them to drain it by themselves idled for the drain wait's 600 s after the first advance).
            await advance_to(client, start + timedelta(days=day))
            await drained(redis_url)
            cpu_events.update(delta(meter.totals(), before))
            wall["events"] += time.perf_counter() - t0
            runs = count(engines, "journeys_step_runs")
            before, t0 = meter.totals(), time.perf_counter()
            await advance_to(client, start + timedelta(days=day + 1))
            await drained(redis_url)
            cpu_advance.update(delta(meter.totals(), before))
            wall["advance"] += time.perf_counter() - t0
            runs_in_advance += count(engines, "journeys_step_runs") - runs
            print(f"day {day + 1}/{days}: {len(batch)} events", file=sys.stderr, flush=True)
    sent = count(engines, "messaging_messages", "WHERE status = 'sent'")
    messages = count(engines, "messaging_messages")
    cpu_all = cpu_events + cpu_advance
    return {
        "events": events, "step_runs_on_timers": runs_in_advance, "messages_sent": sent, "messages": messages,
        "cpu_ms_per_lead_created": {k: round(1000 * v / leads, 3) for k, v in sorted(cpu_leads.items()) if v > 0},
        "cpu_ms_per_event": {k: round(1000 * v / max(1, events), 3) for k, v in sorted(cpu_events.items()) if v > 0},
        "cpu_ms_per_timer": {k: round(1000 * v / max(1, runs_in_advance), 3)
                             for k, v in sorted(cpu_advance.items()) if v > 0},
        "cpu_ms_per_message": round(1000 * cpu_all.get("messaging", 0.0) / max(1, sent), 3),
        "cpu_s_total": {k: round(v, 2) for k, v in sorted(cpu_all.items()) if v > 0},
        "phase_wall_s": {k: round(v, 1) for k, v in wall.items()},
        "idle_cpu_ms_per_s": {k: round(1000 * v / IDLE_S, 2) for k, v in sorted(idle.items()) if v > 0},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=1000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--seed", type=int, default=5)
    add_database_arg(parser)
    args = parser.parse_args()
    started = time.time()
    load_start = os.getloadavg()
    with fresh_database(args.database_url) as url, private_mesh(
            clock="virtual", database_url=url,
            # A loaded shared host can take minutes to start journeys (its rules compile at start).
            settings={"NURTURE_START_TIMEOUT_S": os.environ.get("NURTURE_START_TIMEOUT_S", "300")}) as mesh:
        meter = CpuMeter(mesh.pid, database_name(url), url).start()
        engines = _engines(mesh.data_dir, url)
        try:
            result = asyncio.run(drive(mesh.url, mesh.api_key, mesh.env["NURTURE_REDIS_URL"], meter, engines,
                                       args.leads, args.days, args.seed))
        finally:
            meter.stop()
        result["redis"] = redis_figures(mesh.env["NURTURE_REDIS_URL"], args.leads)
        tables = sql_tables(engines)
        for engine in engines.values():
            engine.dispose()
    lead_days = args.leads * args.days
    result["sql"] = {
        table: {"rows": rows, "bytes": size, "rows_per_lead": round(rows / args.leads, 3),
                "bytes_per_lead": round(size / args.leads, 1), "rows_per_lead_day": round(rows / lead_days, 3),
                "bytes_per_lead_day": round(size / lead_days, 1)}
        for table, (rows, size) in sorted(tables.items(), key=lambda t: -t[1][1]) if rows or size > 8192}
    result["sql_total"] = {"rows": sum(r for r, _ in tables.values()), "bytes": sum(s for _, s in tables.values()),
                           "bytes_per_lead_day": round(sum(s for _, s in tables.values()) / lead_days, 1)}
    out = {"database": database_kind(args.database_url), "leads": args.leads, "days": args.days,
           "load_average_start": [round(v, 2) for v in load_start],
           "load_average_end": [round(v, 2) for v in os.getloadavg()],
           "wall_s": round(time.time() - started, 1), **result}
    for k, v in out.items():
        print(f"{k:24s} {v}", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
