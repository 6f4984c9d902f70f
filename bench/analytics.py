"""Analytics: load many leads and events into the read model, time every report (p95), and measure what
keeping the read model costs the mesh's end-to-end ingest rate. Prints figures, then one JSON line.

    .venv/bin/python bench/analytics.py [--leads 100000] [--events 2000000] [--repeats 20] [--batch 5000]
                                        [--ingest-events 20000] [--skip-reports] [--database-url URL]
                                        [--keep TARGET [--reuse]]

Part 1 (reports): bus messages of `--leads` leads over 90 days (sends, opens, clicks, bounces hard and
soft, complaints, with messaging's sending domain and provider labels; unsubscribes, lifecycle changes,
score changes (every message carries the lead's score), won deals, and page views the read model ignores) go through the
bus adapter and `storage.record`, as the consumer does (the same function, each batch of `--batch`
messages one transaction; the consumer reads up to 2,000 a shard at once); then every report is timed in process
(storage + domain: the gateway and gRPC add their fixed few milliseconds) over the last 30 days and over
all 90, one first call (its wall time reported alone: the first read after a load finds a cold cache)
and then `--repeats` times: wall p95, CPU median and the engine's work per report. Part 2 (ingest
cost): the same mix of events through the gateway's batch endpoint into two private meshes, one without
the analytics service: the end-to-end rate (accepted and handled by every consumer) of each, and their
ratio; per run, the CPU milliseconds per event of each process (Redis and, on PostgreSQL, each service's
backends included), the load average, and when each consumer group was done. `--skip-reports`: part 2 alone.

`--keep TARGET` keeps the loaded read model: on SQLite TARGET is a directory (its `analytics.db`), with
`--database-url` the name of a database on that server (created, never dropped). `--reuse` (with the same
`--keep` and `--database-url`) times the reports on what a run with `--keep` loaded, without loading again
(the load's figures are those recorded then, in `analytics_meta`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._cpu import CpuMeter, per_event  # noqa: E402
from bench._http import LeanClient  # noqa: E402
from bench._mesh import add_database_arg, database_kind, database_name, fresh_database, private_mesh  # noqa: E402
from bench.ingest import drained  # noqa: E402
from nurture.db import Database, open_database  # noqa: E402
from nurture.settings import load_settings  # noqa: E402
from services.analytics import storage, tables  # noqa: E402
from services.analytics.app.core import load_costs  # noqa: E402
from services.analytics.domain import reports  # noqa: E402
from services.analytics.domain.facts import from_bus  # noqa: E402
from services.analytics.server import MIGRATIONS  # noqa: E402

END = datetime(2026, 6, 1, tzinfo=UTC)
DAYS = 90
JOURNEYS = {"skilled_professional": ["welcome", "education", "consideration", "decision"],
            "family": ["welcome", "education", "decision"], "entrepreneur": ["welcome", "value", "conversion"],
            "webinar": ["registration", "event", "follow_up"], "re_engagement": ["recovery", "last_call"]}
SEGMENTS = ["skilled_professional", "family", "entrepreneur", ""]
TOPICS = ["careers_and_skills", "family_relocation", "business_immigration", "events", "reengagement"]
FORMATS = ["newsletter", "guide", "webinar", "comparison", "offer"]
STAGES = ["subscriber", "lead", "mql", "sql", "trial", "customer"]
# Bus message mix by type (the rest are page views, which the read model drops at the adapter).
MIX = [("email_sent", 0.30), ("email_opened", 0.18), ("email_clicked", 0.07), ("email_hard_bounced", 0.01),
       ("email_bounced", 0.01), ("unsubscribed", 0.005), ("stage_changed", 0.03), ("opportunity_won", 0.004),
       ("email_soft_bounced", 0.01), ("spam_reported", 0.001), ("score_changed", 0.10)]
# Messaging's deliverability labels on its email events (sending domain, mailbox provider).
PROVIDERS = ["gmail", "yahoo", "microsoft", "apple", "other"]
SENDING_DOMAINS = ["borderbridge.example", "news.borderbridge.example"]


def history(leads: int, events: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """Bus messages in time order, each lead's story consistent enough for every report to have work."""
    rnd = random.Random(seed)
    kinds, weights = zip(*MIX, strict=True)
    rest = 1 - sum(weights)
    start = END - timedelta(days=DAYS)
    step = timedelta(days=DAYS) / max(1, events)
    stage = [0] * leads
    sends = [0] * leads
    score = [0] * leads
    for n in range(events):
        lead = rnd.randrange(leads)
        lid = f"L{lead}"
        at = start + step * n
        kind = rnd.choices([*kinds, "page_viewed"], [*weights, rest])[0]
        journey = sorted(JOURNEYS)[lead % len(JOURNEYS)]
        props: dict[str, Any] = {}
        mid = ""
        if kind.startswith("email") or kind in ("unsubscribed", "spam_reported"):
            if kind in ("email_sent", "email_hard_bounced"):
                sends[lead] += 1
            k = max(0, sends[lead] - rnd.randrange(0, 2))
            mid = f"m{lead}-{k}"
            stages = JOURNEYS[journey]
            st = stages[min(len(stages) - 1, k // 3)]
            props = {"message_id": mid, "journey": journey, "step": f"email_{k:02d}", "stage": st,
                     "template": f"{journey}.email_{k % 17:02d}", "channel": "email",
                     "topic": TOPICS[lead % len(TOPICS)], "format": FORMATS[k % len(FORMATS)]}
            if kind in ("email_sent", "email_hard_bounced", "email_soft_bounced", "spam_reported"):
                props |= {"provider": PROVIDERS[lead % len(PROVIDERS)],
                          "sending_domain": SENDING_DOMAINS[(lead // 5) % len(SENDING_DOMAINS)]}
                if kind == "email_hard_bounced":
                    props["bounce"] = "hard"
        elif kind == "stage_changed":
            if stage[lead] == len(STAGES) - 1:
                kind = "page_viewed"
            else:
                old = STAGES[stage[lead]]
                stage[lead] += 1
                props = {"old": old, "new": STAGES[stage[lead]]}
        elif kind == "score_changed":
            old_score = score[lead]
            score[lead] = max(0, old_score + rnd.randint(-3, 12))
            props = {"old": old_score, "new": score[lead]}
        elif kind == "opportunity_won":
            props = {"deal_id": f"d{n}", "stage": "closed_won", "amount": rnd.choice([1500, 4800, 12000])}
        suffix = {"stage_changed": ":stage", "score_changed": ":score"}.get(kind, "")
        yield {"id": f"e{n}{suffix}", "lead_id": lid, "type": kind,
               "properties": props, "occurred_at": at.isoformat(),
               "lead": {"id": lid, "segment": SEGMENTS[lead % len(SEGMENTS)] or None, "score": score[lead],
                        "created_at": start.isoformat()}}


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 2)


def _engagement(s: Any, q: storage.Query, *, group: str) -> Any:
    return storage.engagement_report(s, q, group)


def _attribution(s: Any, q: storage.Query, *, model: str) -> Any:
    return storage.attribution_report(s, q, model, 30)


def _sequences(s: Any, q: storage.Query, *, length: int, unit: str) -> Any:
    return storage.sequences_report(s, q, length, unit, 30)


def _roi(s: Any, q: storage.Query, *, costs: dict[str, Any]) -> Any:
    return storage.roi_report(s, q, costs)


def _timeseries(s: Any, q: storage.Query, *, metric: str) -> Any:
    return storage.timeseries_report(s, q, metric, "day")


def _deliverability(s: Any, q: storage.Query) -> Any:
    return storage.deliverability_report(s, q, None, None, "day")


def _sequence_rates(s: Any, q: storage.Query, *, length: int, unit: str) -> Any:
    return storage.sequence_rates_report(s, q, length, unit, 30)


def _progression_tables(s: Any, q: storage.Query, *, tables: tuple[str, ...]) -> Any:
    return storage.progression_report(s, q, tables)


def _journey_stages(s: Any, q: storage.Query) -> Any:
    # The console's journey page: the progression report's stages of one journey.
    return storage.progression_report(s, storage.Query(q.start, q.end, None, "family"), ("stages",))


class Meter:
    """Load-independent costs of one report call: statements sent, CPU milliseconds (this process, plus
    the PostgreSQL backend's from /proc when the server is local), and the work the engine did: SQLite
    virtual-machine steps (thousands, from a progress handler) or PostgreSQL rows read (tuples fetched
    and scanned, from pg_stat_user_tables)."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.pg = not db.is_sqlite
        self.statements = 0
        self.steps = 0
        event.listen(db.engine, "before_cursor_execute", self._count)

    def _count(self, *_args: Any) -> None:
        self.statements += 1

    def _tick(self) -> int:
        self.steps += 1
        return 0

    @staticmethod
    def _backend_cpu(conn: Any) -> float:
        pid = conn.execute(text("select pg_backend_pid()")).scalar()
        conn.commit()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _rows_read(conn: Any) -> int:
        # A backend sends its table counters when it goes idle; the view is read in a later transaction.
        conn.execute(text("select pg_stat_force_next_flush()"))
        conn.commit()
        n = int(conn.execute(text("select coalesce(sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)), 0) "
                                  "from pg_stat_user_tables where relname like 'analytics_%'")).scalar() or 0)
        conn.commit()
        return n

    def measure(self, fn: Callable[[Any], Any]) -> dict[str, float]:
        if self.pg:
            with self.db.engine.connect() as conn:
                rows0, cpu0 = self._rows_read(conn), self._backend_cpu(conn)
                self.statements = 0
                c0, t0 = time.process_time(), time.perf_counter()
                with Session(bind=conn) as s:
                    fn(s)
                conn.commit()
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                statements = self.statements
                cpu += self._backend_cpu(conn) - cpu0
                work = self._rows_read(conn) - rows0
            return {"wall": wall, "cpu": cpu, "statements": statements, "work": work}
        with self.db.session() as s:
            raw = s.connection().connection.dbapi_connection
            raw.set_progress_handler(self._tick, 1000)
            self.statements, self.steps = 0, 0
            c0, t0 = time.process_time(), time.perf_counter()
            fn(s)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            statements, work = self.statements, self.steps
            raw.set_progress_handler(None, 1000)
        return {"wall": wall, "cpu": cpu, "statements": statements, "work": work}


def _on(fn: Callable[[Any, storage.Query], Any], q: storage.Query, s: Any) -> Any:
    return fn(s, q)


BENCH_KEY = "bench_load"  # `analytics_meta` row of a kept read model: what was loaded, for `--reuse`


def load(db: Database, leads: int, events: int, batch_size: int) -> dict[str, Any]:
    """The history through the bus adapter and `storage.record`, `batch_size` messages a transaction."""
    batch: list[Any] = []
    recorded = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for m in history(leads, events):
        batch.append(m)
        if len(batch) == batch_size:
            recorded += _record(db, batch)
            batch = []
    if batch:
        recorded += _record(db, batch)
    load_s = time.perf_counter() - t0
    load_cpu_s = time.process_time() - c0
    if not db.is_sqlite:
        # What autovacuum does to a table that grew this much (since PostgreSQL 13 inserts alone trigger it):
        # fresh statistics for the planner, and the visibility map that lets an index-only scan skip the
        # table. A live read model gets both within minutes of a bulk load; a bench that times right after
        # the load would measure a state no deployment stays in.
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    figures = {"leads": leads, "events": events, "batch": batch_size, "facts_recorded": recorded,
               "load_s": round(load_s, 1), "load_events_per_s": round(events / load_s, 1),
               "load_cpu_ms_per_event_this_process": round(load_cpu_s * 1000 / events, 4)}
    with db.session() as s:  # what was loaded, and by which fold (a service started on it would not rebuild)
        s.execute(tables.meta.insert(), [
            {"key": BENCH_KEY, "value": json.dumps({k: figures[k] for k in
                                                   ("leads", "events", "batch", "facts_recorded", "load_s")})},
            {"key": "fold_version", "value": storage.FOLD_VERSION}])
    return figures


def _record(db: Database, messages: list[dict[str, Any]]) -> int:
    """One batch as the consumer's handler takes it (core.ReadModel: the adapter, then `record` in one
    transaction)."""
    with db.session() as s:
        return storage.record(s, [f for f in (from_bus(m) for m in messages) if f is not None])


def loaded(db: Database) -> dict[str, Any]:
    """What a `--keep` run loaded into this read model; refuses one made by another fold version."""
    with db.session() as s:
        rows = dict(s.execute(select(tables.meta.c.key, tables.meta.c.value)).all())
    if BENCH_KEY not in rows:
        raise SystemExit("--reuse: this database holds no read model a --keep run loaded")
    if rows.get("fold_version") != storage.FOLD_VERSION:
        raise SystemExit(f"--reuse: the read model was folded by fold version {rows.get('fold_version')}, this "
                         f"code folds version {storage.FOLD_VERSION}: load it again (without --reuse)")
    return {**json.loads(rows[BENCH_KEY]), "reused": True}


def time_reports(db_url: str | None, data: Path, leads: int, events: int, repeats: int, batch_size: int,
                 reuse: bool) -> dict[str, Any]:
    settings = load_settings(environ={}, data_dir=data, database_url=db_url)
    db = open_database(settings, service="analytics", migrations_dir=MIGRATIONS)
    figures = loaded(db) if reuse else load(db, leads, events, batch_size)
    costs = load_costs()
    last30 = storage.Query(reports.day_of(END - timedelta(days=30)), reports.day_of(END))
    full = storage.Query(reports.day_of(END - timedelta(days=DAYS)), reports.day_of(END))
    cases: dict[str, Callable[[Any, storage.Query], Any]] = {
        **{f"engagement_{g}": functools.partial(_engagement, group=g) for g in reports.ENGAGEMENT_GROUPS},
        "progression": storage.progression_report,
        **{f"attribution_{m}": functools.partial(_attribution, model=m) for m in reports.ATTRIBUTION_MODELS},
        **{f"sequences_{n}_{u}": functools.partial(_sequences, length=n, unit=u)
           for n in reports.SEQUENCE_LENGTHS for u in reports.SEQUENCE_UNITS},
        "roi": functools.partial(_roi, costs=costs),
        **{f"timeseries_{m}": functools.partial(_timeseries, metric=m) for m in reports.TIMESERIES_METRICS},
        "deliverability": _deliverability,
        **{f"sequence_rates_{n}_{u}": functools.partial(_sequence_rates, length=n, unit=u)
           for n in reports.SEQUENCE_LENGTHS for u in reports.SEQUENCE_UNITS},
        "journey_page_stages": _journey_stages,
        "progression_segments": functools.partial(_progression_tables, tables=("segments",)),
    }
    out: dict[str, Any] = {**figures, "load_average_1m_after_load": round(os.getloadavg()[0], 2)}
    meter = Meter(db)
    work = "rows_read" if meter.pg else "sqlite_kilo_steps"

    def baseline(s: Any, _q: storage.Query) -> Any:
        return s.execute(select(func.count()).select_from(tables.leads).where(tables.leads.c.lead_id == "L1")).all()

    worst, worst_ratio, worst_cpu, worst_first = 0.0, 0.0, 0.0, 0.0
    base = {"wall": 0.0, "cpu": 0.0}
    for name, fn in {"baseline": baseline, **cases}.items():
        for label, q in (("30d", last30), ("90d", full)):
            call: Callable[[Any], Any] = functools.partial(_on, fn, q)
            # The first call of a report reads its tables' pages from disk when nothing has read them since
            # the load (a cold cache): reported on its own, and the p95 is of the `repeats` calls after it,
            # as a read model serving reports keeps its pages cached.
            first = meter.measure(call)
            out[f"{name}_{label}_first_call_ms"] = round(first["wall"] * 1000, 2)
            samples = [meter.measure(call) for _ in range(repeats)]
            ms = p95([x["wall"] for x in samples])
            cpu_ms = round(sorted(x["cpu"] for x in samples)[len(samples) // 2] * 1000, 2)
            out[f"{name}_{label}_p95_ms"] = ms
            out[f"{name}_{label}_cpu_ms_median"] = cpu_ms
            out[f"{name}_{label}_statements"] = samples[-1]["statements"]
            out[f"{name}_{label}_{work}"] = samples[-1]["work"]
            if name == "baseline":
                base = {"wall": max(base["wall"], ms), "cpu": max(base["cpu"], cpu_ms, 0.01)}
                continue
            out[f"{name}_{label}_p95 / baseline_p95"] = round(ms / base["wall"], 1) if base["wall"] else None
            worst, worst_cpu = max(worst, ms), max(worst_cpu, cpu_ms)
            worst_first = max(worst_first, out[f"{name}_{label}_first_call_ms"])
            worst_ratio = max(worst_ratio, ms / base["wall"] if base["wall"] else 0.0)
    out["worst_report_p95_ms"] = worst
    out["worst_report_p95_ms / 300"] = round(worst / 300, 3)
    out["worst_report_cpu_ms_median"] = worst_cpu
    out["worst_report_first_call_ms"] = worst_first
    out["worst_report_p95 / baseline_p95"] = round(worst_ratio, 1)
    out["load_average_1m_after_reports"] = round(os.getloadavg()[0], 2)
    out["wall_p95_ms_per_report"] = {name: {label: out[f"{name}_{label}_p95_ms"] for label in ("30d", "90d")}
                                     for name in cases}
    db.close()
    return out


def cpu_seconds(parent: int) -> dict[str, float]:
    """CPU time (user + system) used so far by each service process under `nurture up` (by module)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return out
    for pid in children:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        module = next((a.decode() for a in argv if a.startswith((b"services.", b"gateway"))), "")
        if module:
            out[module] = (int(fields[11]) + int(fields[12])) / tick
    return out


async def groups_done(redis_url: str, since: float, timeout: float = 600.0) -> dict[str, float]:
    """Seconds from `since` (a perf_counter) until each consumer group had read and acknowledged every
    entry of every shard (polled every 0.1 s), once all have: which consumer the end-to-end rate waited for."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    done: dict[str, float] = {}
    try:
        while time.perf_counter() - since < timeout:
            behind: dict[str, int] = {}
            async for key in client.scan_iter(match="nurture:bus:{s*}"):
                last = (await client.xinfo_stream(key))["last-generated-id"]
                for group in await client.xinfo_groups(key):
                    name = group["name"].decode()
                    behind[name] = behind.get(name, 0) + int(group["pending"]) + (group["last-delivered-id"] != last)
            now = round(time.perf_counter() - since, 2)
            for name, n in behind.items():
                if n:
                    done.pop(name, None)
                else:
                    done.setdefault(name, now)
            if not any(behind.values()):
                break
            await asyncio.sleep(0.1)
        return done
    finally:
        await client.aclose()


async def ingest_rate(url: str, key: str, redis_url: str, events: int, without: tuple[str, ...], meter: CpuMeter
                      ) -> tuple[float, dict[str, float], dict[str, float]]:
    """Events per second from the first batch posted until every consumer group has handled everything;
    the CPU milliseconds per event each process of the mesh (and on PostgreSQL each service's backends)
    spent meanwhile; and the seconds until each consumer group was done (`posted`: the last batch's 202)."""
    headers = {"Authorization": f"Bearer {key}"}
    leads = 500
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        deadline = time.monotonic() + 300  # a busy machine starts the mesh slowly: wait until all serve
        while time.monotonic() < deadline:
            try:
                services = (await client.get("/readyz", timeout=5)).json()["services"]
                if all(v["status"] == "SERVING" for k, v in services.items() if k not in without):
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.5)
        for i in range(0, leads, 50):
            await asyncio.gather(*(client.post("/v1/leads", json={"id": f"a{j}", "email": f"a{j}@example.com"})
                                   for j in range(i, i + 50)))
    await drained(redis_url)
    # Score changes are scoring's to publish (for each event its rules score), not events to post.
    mix = [m for m in history(leads, events, seed=11) if m["type"] != "score_changed"]
    for m in mix:
        m["lead_id"] = f"a{m['lead_id'][1:]}"
    lean = LeanClient(url, headers)
    queue = iter(range(0, len(mix), 1000))

    async def batcher() -> None:
        for b in queue:
            body = {"events": [{"lead_id": m["lead_id"], "type": m["type"], "properties": m["properties"],
                                "occurred_at": m["occurred_at"]} for m in mix[b:b + 1000]]}
            status, text = await lean.post("/v1/events:batch", body)
            assert status == 202, text[:300]

    cpu_before = meter.totals()
    start = time.perf_counter()
    await asyncio.gather(*(batcher() for _ in range(2)))
    posted = round(time.perf_counter() - start, 2)
    done = await groups_done(redis_url, start)
    elapsed = time.perf_counter() - start
    cpu = per_event(cpu_before, meter.totals(), len(mix))
    await lean.aclose()
    return len(mix) / elapsed, cpu, {"posted": posted, **dict(sorted(done.items(), key=lambda kv: kv[1]))}


def ingest_cost(db_url: str | None, events: int) -> dict[str, Any]:
    # On a shared machine the load of the moment moves wall-clock rates more than anything measured
    # here, so the meshes take turns (without, with, twice; each rate the better of its two) and the
    # CPU milliseconds per event each process spent on the same load are reported too (each run's, with
    # the load average): they do not depend on the neighbours. Each run also says when each consumer
    # group was done: analytics folds at niceness 10 in batches of thousands, so it is usually last.
    rates: dict[str, float] = {}
    runs: list[dict[str, Any]] = []
    for label, without in (("without_analytics", ("analytics",)), ("with_analytics", ())) * 2:
        with fresh_database(db_url) as database_url, private_mesh(database_url=database_url, without=without) as mesh:
            meter = CpuMeter(mesh.pid, database_name(database_url), database_url).start()
            try:
                load_before = os.getloadavg()[0]
                rate, used, done = asyncio.run(ingest_rate(mesh.url, mesh.api_key, mesh.env["NURTURE_REDIS_URL"],
                                                           events, without, meter))
            finally:
                meter.stop()
            rates[label] = max(rates.get(label, 0.0), rate)
            runs.append({"mesh": label, "events_per_s": round(rate, 1), "cpu_ms_per_event": used,
                         "done_s": done, "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]})
    ratio = rates["with_analytics"] / rates["without_analytics"]
    with_runs = [r["cpu_ms_per_event"] for r in runs if r["mesh"] == "with_analytics"]
    shares = [round(r.get("analytics", 0.0) / r["total"], 4) for r in with_runs if r.get("total")]
    return {"ingest_events": events,
            "end_to_end_events_per_s_without_analytics": round(rates["without_analytics"], 1),
            "end_to_end_events_per_s_with_analytics": round(rates["with_analytics"], 1),
            "with / without": round(ratio, 3),
            "analytics_cpu / mesh_cpu (each run with analytics)": shares,
            "ingest_runs": runs}


@contextlib.contextmanager
def _target(url: str | None, keep: str | None, reuse: bool) -> Iterator[tuple[str | None, Path]]:
    """Where the read model lives: a fresh database (and a temporary data dir) dropped after the run, or
    the `--keep` target, created for a load (it must not exist yet) and left in place."""
    sqlite = database_kind(url) == "sqlite"
    if keep is None:
        data = Path(tempfile.mkdtemp(prefix="nurture-bench-analytics-"))
        try:
            with fresh_database(url) as database_url:
                yield database_url, data
        finally:
            shutil.rmtree(data, ignore_errors=True)
        return
    if sqlite:
        data = Path(keep)
        exists = (data / "analytics.db").exists()
        if exists != reuse:
            raise SystemExit(f"{data / 'analytics.db'} " + ("exists: pass --reuse, or remove it to load again"
                                                            if exists else "does not exist: load it without --reuse"))
        data.mkdir(parents=True, exist_ok=True)
        yield None, data
        return
    assert url is not None
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", keep):
        raise SystemExit("--keep with --database-url: a database name of lower-case letters, digits and _")
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = bool(conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": keep}).scalar())
            if exists != reuse:
                raise SystemExit(f"database {keep!r} " + ("exists: pass --reuse, or drop it to load again" if exists
                                                          else "does not exist: load it without --reuse"))
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{keep}"'))
    finally:
        admin.dispose()
    data = Path(tempfile.mkdtemp(prefix="nurture-bench-analytics-"))
    try:
        yield sa.make_url(url).set(database=keep).render_as_string(hide_password=False), data
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=5_000, help="messages per transaction of the load")
    parser.add_argument("--ingest-events", type=int, default=20_000, help="0: skip the ingest-cost part")
    parser.add_argument("--skip-reports", action="store_true", help="the ingest-cost part alone (no load, no "
                        "report timed)")
    parser.add_argument("--keep", metavar="TARGET", help="keep the loaded read model: a directory (SQLite) or, "
                        "with --database-url, a database name on that server")
    parser.add_argument("--reuse", action="store_true", help="time the reports on what --keep TARGET holds, "
                        "without loading")
    add_database_arg(parser)
    args = parser.parse_args()
    if args.reuse and not args.keep:
        parser.error("--reuse needs --keep TARGET: the read model a --keep run loaded")
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    if args.skip_reports and not args.ingest_events:
        parser.error("--skip-reports with --ingest-events 0 leaves nothing to run")
    kind = database_kind(args.database_url)
    result: dict[str, Any] = {"database": kind, "kept": args.keep}
    if not args.skip_reports:
        with _target(args.database_url, args.keep, args.reuse) as (database_url, data):
            result.update(time_reports(database_url, data, args.leads, args.events, args.repeats, args.batch,
                                       args.reuse))
    if args.ingest_events:
        result.update(ingest_cost(args.database_url, args.ingest_events))
    for name, value in result.items():
        if not isinstance(value, dict | list):
            print(f"{name:48s} {value}")
    for run in result.get("ingest_runs", []):
        print(f"  {run['mesh']:18s} {run['events_per_s']:8.1f}/s  load {run['load_average_1m']}  done (s) "
              f"{run['done_s']}\n  {'':18s} CPU ms per event {run['cpu_ms_per_event']}")
    if "wall_p95_ms_per_report" in result:
        print(f"{'wall p95 ms per report':48s} {'30d':>9s} {'90d':>9s}")
        for name, p in result["wall_p95_ms_per_report"].items():
            print(f"  {name:46s} {p['30d']:9.2f} {p['90d']:9.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
