"""`nurture up --replicas 2` on PostgreSQL: two processes of every service behind one address each (the
gateway and the services balance over them; journeys and analytics share the leads' partitions), and a
lead goes from sign-up through its journey to a sent email, also after a replica of scoring, messaging
and journeys is SIGKILLed. Refused on the embedded SQLite default, which one process per service writes."""

from __future__ import annotations

import asyncio
import contextlib
import email
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from bench._mesh import Mesh, fresh_database, mesh_children, private_mesh
from nurture.partitions import lease_key, replica_name
from nurture.rpc import health_status
from tests.conftest import PG_URL

REPLICATED = ("scoring", "journeys", "messaging", "crm_sync", "analytics")


@pytest.fixture(scope="module")
def replicated_mesh() -> Iterator[Mesh]:
    # Every trace recorded: the test reads which replica answered from the server spans.
    every_trace = {"NURTURE_TRACE_SAMPLE_RATIO": "1"}
    with fresh_database(PG_URL) as url, \
            private_mesh(clock="virtual", database_url=url, replicas=2, settings=every_trace) as running:
        yield running


@pytest.mark.slow
@pytest.mark.timeout(300)  # the start of 11 processes, each migrating its schema, on a loaded shared machine
@pytest.mark.skipif(not PG_URL, reason="replicas share a PostgreSQL database (NURTURE_TEST_DATABASE_URL)")
def test_a_lead_reaches_a_sent_email_through_two_replicas_of_each_service(replicated_mesh: Mesh) -> None:
    mesh = replicated_mesh
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    with httpx.Client(base_url=mesh.url, headers=headers, timeout=120) as api:
        ready = api.get("/readyz")
        assert ready.status_code == 200, ready.text
        addresses = {s: v["address"] for s, v in ready.json()["services"].items()}
        for service in REPLICATED:  # two replicas, each serving on its own port
            replicas = addresses[service].split(",")
            assert len(replicas) == 2, addresses
            assert [asyncio.run(health_status(a)) for a in replicas] == ["SERVING", "SERVING"]

        assert api.post("/v1/leads", json={"id": "eve", "email": "eve@example.com", "consent": {"email": True},
                                           "timezone": "Europe/Lisbon"}).status_code == 201
        r = api.post("/v1/events", json={"lead_id": "eve", "type": "page_viewed",
                                         "properties": {"category": "funding"}})
        assert r.status_code == 202
        assert api.post("/v1/admin/clock/advance", json={"seconds": 3600}).status_code == 200
        lead = api.get("/v1/leads/eve").json()
        assert lead["segment"] == "entrepreneur"
        sent = [m for m in api.get("/v1/leads/eve/messages").json()["items"] if m["status"] == "sent"]
        assert [m["template"] for m in sent] == ["entrepreneur.email_01"]
    # Every replica took calls from the mesh (the gateway's and the services' own channels), read from the
    # server spans each replica wrote to its own trace file (health checks, this test's own, left out).
    deadline = time.monotonic() + 20  # spans are written in batches every 0.5 s
    while (answered := _instances(Path(mesh.data_dir) / "traces")) and time.monotonic() < deadline and any(
            len(answered.get(s, ())) < 2 for s in REPLICATED):
        time.sleep(0.5)
    assert all(len(answered.get(s, ())) == 2 for s in REPLICATED), answered
    mail = [email.message_from_bytes(p.read_bytes()) for p in sorted((Path(mesh.data_dir) / "mail").rglob("*.eml"))]
    assert len([m for m in mail if m["To"] and "eve@example.com" in m["To"]]) == len(sent) == 1


def _replica_pid(mesh: Mesh, service: str, replica: str) -> int:
    """The pid of one replica the mesh's `nurture up` started (its child, by module and NURTURE_REPLICA)."""
    pid = mesh_children(mesh).get(f"{service}-{replica}")
    if pid is None:
        raise AssertionError(f"no {service} replica {replica} under {mesh.pid}")
    return pid


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not PG_URL, reason="replicas share a PostgreSQL database (NURTURE_TEST_DATABASE_URL)")
def test_killed_replicas_leave_the_others_serving(replicated_mesh: Mesh) -> None:
    """SIGKILL replica 1 of scoring, messaging and journeys: the mesh goes on (the channels leave the dead
    ones out; the dead journeys replica's partitions pass to replica 0 when its lease runs out, or back to
    it when the supervisor has restarted it) and a new lead still gets its one email; the first lead
    gets no second one."""
    mesh = replicated_mesh
    killed = {}
    for service in ("scoring", "messaging", "journeys"):
        killed[service] = _replica_pid(mesh, service, "1")
        os.kill(killed[service], signal.SIGKILL)
    _wait_partitions_owned(mesh, killed["journeys"])
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    with httpx.Client(base_url=mesh.url, headers=headers, timeout=120) as api:
        assert api.post("/v1/leads", json={"id": "kim", "email": "kim@example.com", "consent": {"email": True},
                                           "timezone": "Europe/Lisbon"}).status_code == 201
        r = api.post("/v1/events", json={"lead_id": "kim", "type": "page_viewed",
                                         "properties": {"category": "funding"}})
        assert r.status_code == 202
        assert api.post("/v1/admin/clock/advance", json={"seconds": 3600}).status_code == 200
        sent = [m["template"] for m in api.get("/v1/leads/kim/messages").json()["items"] if m["status"] == "sent"]
        assert sent == ["entrepreneur.email_01"]
    mail = [email.message_from_bytes(p.read_bytes()) for p in sorted((Path(mesh.data_dir) / "mail").rglob("*.eml"))]
    to = [str(m["To"]) for m in mail]
    assert len([t for t in to if "kim@example.com" in t]) == 1
    assert len([t for t in to if "eve@example.com" in t]) <= 1  # the first test's lead: not sent again


def _wait_partitions_owned(mesh: Mesh, dead: int, timeout: float = 60) -> None:
    """Until every journeys partition has a live owner: replica 0, once the dead one's leases ran out, or
    replica 1 restarted by the supervisor (it serves only once it has taken its partitions back)."""
    r = redis.Redis.from_url(mesh.env["NURTURE_REDIS_URL"], decode_responses=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            holders = {r.get(lease_key("journeys", p)) for p in range(8)}
            if holders == {replica_name("0")}:
                return
            with contextlib.suppress(AssertionError):
                if _replica_pid(mesh, "journeys", "1") != dead and None not in holders:
                    port = int(_replica_env(_replica_pid(mesh, "journeys", "1"))["NURTURE_GRPC_PORT"])
                    if asyncio.run(health_status(f"127.0.0.1:{port}")) == "SERVING":
                        return
            time.sleep(0.2)
    finally:
        r.close()
    raise AssertionError(f"journeys partitions without a live owner: {holders}")


def _replica_env(pid: int) -> dict[str, str]:
    pairs = (Path(f"/proc/{pid}") / "environ").read_bytes().split(b"\0")
    return dict(p.decode(errors="replace").partition("=")[::2] for p in pairs if b"=" in p)


def _instances(traces: Path) -> dict[str, set[str]]:
    """Per service, the replicas (host:port) that answered a call of the mesh's own API."""
    found: dict[str, set[str]] = {}
    for path in traces.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            span = json.loads(line)
            attributes = span.get("attributes", {})
            method = str(attributes.get("rpc.method", ""))
            if method.startswith("/nurture.") and attributes.get("service.instance"):
                found.setdefault(span["service"].removeprefix("nurture-"), set()).add(attributes["service.instance"])
    return found


def test_replicas_on_the_embedded_sqlite_are_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NURTURE_DATABASE_URL"}
    done = subprocess.run([sys.executable, "-m", "cli", "up", "--replicas", "2", "--data-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2
    assert "--replicas needs a database every replica shares" in done.stderr
    assert "NURTURE_DATABASE_URL=postgresql" in done.stderr
    assert not (tmp_path / "logs").exists()  # refused before anything started


@pytest.mark.parametrize("bad", ["0", "17", "two"])
def test_a_bad_replica_count_is_refused(bad: str) -> None:
    done = subprocess.run([sys.executable, "-m", "cli", "up", "--replicas", bad], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2 and "--replicas" in done.stderr
