"""Start a private mesh (`nurture up` on free ports in a temporary data dir) for a benchmark, and the
database choice every benchmark shares: `--database-url` (or NURTURE_DATABASE_URL) runs it on
PostgreSQL, in a fresh database created for the run and dropped after it; without it, SQLite."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import sqlalchemy as sa

from cli.supervisor import die_with_parent
from nurture.ports import free_port
from nurture.settings import SERVICES


@dataclass
class Mesh:
    url: str
    api_key: str
    env: dict[str, str]  # NURTURE_MESH_TOKEN signs gRPC calls; NURTURE_REDIS_URL carries the password
    data_dir: str
    pid: int = 0  # the `nurture up` process (its children are the mesh's processes)


def add_database_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", default=os.environ.get("NURTURE_DATABASE_URL"),
                        help="a PostgreSQL server URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test): the "
                             "run gets a fresh database on it; default: SQLite under a temporary data dir")


def database_kind(url: str | None) -> str:
    return "sqlite" if not url or url.startswith("sqlite") else url.split("+", 1)[0].split(":", 1)[0]


def database_name(url: str | None) -> str | None:
    """The database a PostgreSQL URL names (its backends' process titles carry it), None for SQLite."""
    return None if not url or url.startswith("sqlite") else sa.make_url(url).database


def report_scans(url: str) -> None:
    """Print, to stderr, the tables the run read by sequential scan (rows read that way, against rows
    fetched by index): a hot statement without a usable index shows here first."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0), coalesce(idx_tup_fetch, 0), "
                "n_live_tup FROM pg_stat_user_tables WHERE seq_tup_read > 0 ORDER BY seq_tup_read DESC LIMIT 12"
            )).all()
    except sa.exc.SQLAlchemyError as exc:
        print(f"table scan report unavailable: {exc}", file=sys.stderr)
        return
    finally:
        engine.dispose()
    print("table scans (table, seq scans, rows read by them, index scans, rows fetched by index, live rows):",
          file=sys.stderr)
    for row in rows:
        print("  " + "  ".join(str(v) for v in row), file=sys.stderr)


@contextmanager
def fresh_database(url: str | None) -> Iterator[str | None]:
    """A new, empty database on the server of `url` for one run (so figures never depend on what an
    earlier run left), dropped afterwards; SQLite (None) passes through."""
    if not url or url.startswith("sqlite"):
        yield None
        return
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"nurture_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    fresh = sa.make_url(url).set(database=name).render_as_string(hide_password=False)
    try:
        yield fresh
    finally:
        report_scans(fresh)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _cluster_ports(masters: int) -> int:
    """A first port for N cluster nodes: it and the N-1 after it free, and each one's bus port (+10000)."""
    import socket

    from cli.rediscluster import BUS_PORT_OFFSET

    for _ in range(100):
        first = free_port()
        wanted = [p + offset for p in range(first, first + masters) for offset in (0, BUS_PORT_OFFSET)]
        try:
            for port in wanted:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError("no free ports for a local Redis Cluster")


@contextmanager
def private_mesh(clock: str = "real", database_url: str | None = None, without: tuple[str, ...] = (),
                 redis_cluster: int = 0, replicas: int = 1, settings: dict[str, str] | None = None,
                 redis_cluster_replicas: int = 0) -> Iterator[Mesh]:
    """`redis_cluster` N > 0: an embedded Redis Cluster of N masters (`nurture up --redis-cluster N`), each
    with `redis_cluster_replicas` replicas (`--redis-cluster-replicas R`, on the ports after the masters').
    `replicas` N > 1: N processes of each replicated service (`nurture up --replicas N`; PostgreSQL only).
    `settings`: more `NURTURE_*` variables for every process (`{"NURTURE_TRACE_SAMPLE_RATIO": "1"}`)."""
    data = tempfile.mkdtemp(prefix="nurture-bench-")
    http = free_port()
    redis_password = secrets.token_urlsafe(24)
    redis_port = _cluster_ports(redis_cluster * (1 + redis_cluster_replicas)) if redis_cluster else free_port()
    env = {**os.environ, "NURTURE_REDIS_URL": f"redis://:{redis_password}@127.0.0.1:{redis_port}/0",
           "NURTURE_EMBEDDED_REDIS": "1", "NURTURE_MESH_TOKEN": secrets.token_urlsafe(24),
           "NURTURE_SMTP_URL": f"smtp://127.0.0.1:{free_port()}", "NURTURE_CRM_URL": f"http://127.0.0.1:{free_port()}",
           "NURTURE_LOG_LEVEL": "WARNING", "NURTURE_EMBEDDED_SMTP": "1", "NURTURE_EMBEDDED_CRM": "1",
           "NURTURE_BOUNCE_SMTP_ADDR": f"127.0.0.1:{free_port()}"}
    for service in SERVICES:
        env[f"NURTURE_{service.upper()}_ADDR"] = f"127.0.0.1:{free_port()}"
    env.pop("NURTURE_DATABASE_URL", None)
    if database_url:
        env["NURTURE_DATABASE_URL"] = database_url
    env.update(settings or {})
    proc = subprocess.Popen([sys.executable, "-m", "cli", "up", "--data-dir", data, "--http-port", str(http),
                             "--clock", clock, "--api-key", "bench-key",
                             *[a for service in without for a in ("--without", service)],
                             *(["--redis-cluster", str(redis_cluster)] if redis_cluster else []),
                             *(["--redis-cluster-replicas", str(redis_cluster_replicas)]
                               if redis_cluster and redis_cluster_replicas else []),
                             *(["--replicas", str(replicas)] if replicas > 1 else [])],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # A test or bench killed outright still stops its mesh (SIGINT: a clean stop).
                            preexec_fn=lambda: die_with_parent(signal.SIGINT))
    url = f"http://127.0.0.1:{http}"
    # Up means every service serves (/readyz), not only the gateway (/healthz): on a loaded machine the
    # gateway answered while messaging was still starting, and an e2e test's first call got a 503. A mesh
    # started `without` some service is never ready: the gateway's answer is all it can wait for.
    probe = f"{url}/healthz" if without else f"{url}/readyz"
    try:
        # A loaded shared machine starts the mesh slowly: as long as `nurture up` may wait for its services.
        deadline = time.monotonic() + max(300.0, 5 * float(env.get("NURTURE_START_TIMEOUT_S") or 60))
        while True:
            try:
                if httpx.get(probe, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"nurture up failed:\n{proc.stdout.read() if proc.stdout else ''}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the mesh did not answer /healthz in time; logs under {data}/logs")
            time.sleep(0.2)
        yield Mesh(url=url, api_key="bench-key", env=env, data_dir=data, pid=proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def child_processes(parent: int) -> Iterator[tuple[Path, list[bytes]]]:
    """The /proc folder and argv of each child of `parent` (one that ends while it is read is left out)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == parent:
            yield entry, argv


def mesh_children(mesh: Mesh) -> dict[str, int]:
    """The mesh's processes by name (`scoring-1`, `redis-3`, ...), read from /proc: children of its `nurture up`."""
    found: dict[str, int] = {}
    for entry, argv in child_processes(mesh.pid):
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for service in SERVICES:
            if f"services.{service}".encode() in argv and b"-m" in argv:
                replica = next((e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"NURTURE_REPLICA=")),
                               "0")
                found[f"{service}-{replica}"] = int(entry.name)
        # redis-server retitles itself: "<path>/redis-server 127.0.0.1:<port> [cluster]"
        title = b" ".join(argv).decode(errors="replace")
        if "redis-server" in title and (port := re.search(r"redis-server\S* [\d.]+:(\d+)", title)):
            found[f"redis:{port.group(1)}"] = int(entry.name)
    return found
