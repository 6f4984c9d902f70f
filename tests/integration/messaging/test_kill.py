"""Kill test: SIGKILL the messaging process while it delivers, restart it, and check that every message
reached the (real, aiosmtpd) SMTP server's mailbox exactly once, for messages requested one Send at a
time and for messages requested in SendBatch calls."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.settings import Settings
from services.messaging.smtp_sink import SmtpSink
from tests.conftest import free_port, mesh_channel
from tests.helpers.processes import spawn_service, wait_serving
from tests.integration.messaging.harness import make_lead, start_scoring_stub

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
N = 400


def spawn(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    return spawn_service("messaging", settings.with_overrides(grpc_port=port, clock="real", log_level="WARNING"),
                         log=settings.data_dir.parent / "messaging.log")


def statuses(db: sa.Engine) -> dict[str, int]:
    """Read through the URL messaging stores under (SQLite file or PostgreSQL), so the test runs on both."""
    with db.connect() as conn:
        return {str(s): int(n) for s, n in conn.execute(
            sa.text("select status, count(*) from messaging_messages group by status"))}


def request(i: int) -> messaging_pb2.SendRequest:
    # Transactional: no send window or caps, so all N go at once (whatever the test's hour).
    return messaging_pb2.SendRequest(
        dedupe_key=f"k{i}:webinar:1:email_01:0", lead_id=f"k{i}", journey="webinar", journey_version=1,
        step="email_01", channel="email", template="webinar.email_01", category="transactional")


@pytest.mark.parametrize("mode", ["send", "batch"])
async def test_kill_during_delivery_delivers_each_message_once(settings: Settings, tmp_path: Path,
                                                               mode: str) -> None:
    scoring, scoring_server = await start_scoring_stub()
    for i in range(N):
        scoring.add(make_lead(f"k{i}", timezone="UTC"))
    sink = SmtpSink(tmp_path / "mail").start()
    cfg = settings.with_overrides(smtp_url=sink.url, scoring_addr=f"127.0.0.1:{scoring_server.port}",
                                  journeys_addr=f"127.0.0.1:{free_port()}")
    port = free_port()
    db = sa.create_engine(cfg.database_url_for("messaging"))
    proc = spawn(cfg, port)
    try:
        await wait_serving(f"127.0.0.1:{port}")
        async with mesh_channel(f"127.0.0.1:{port}") as ch:
            stub = messaging_pb2_grpc.MessagingStub(ch)
            if mode == "send":
                ids = list(await asyncio.gather(*(stub.Send(request(i), timeout=10) for i in range(N))))
            else:  # batches of 100 items, as journeys sends several due messages at once
                replies = await asyncio.gather(*(stub.SendBatch(messaging_pb2.SendBatchRequest(
                    items=[request(i) for i in range(start, start + 100)]), timeout=10) for start in range(0, N, 100)))
                ids = [r for reply in replies for r in reply.results]
            assert [r.status for r in ids] == ["scheduled"] * N
        # Kill between an SMTP accept and its recording: freeze the process, and kill it only when the
        # mailbox holds more than the database records as sent (else let it run on and look again).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            await asyncio.sleep(0.002)
            if sink.handler.received < N // 4:
                continue
            proc.send_signal(signal.SIGSTOP)
            if sink.handler.received > statuses(db).get("sent", 0):
                break
            proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        before = statuses(db)
        assert before.get("sent", 0) < N, "the kill came too late to test anything"
        proc = spawn(cfg, port)
        await wait_serving(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while statuses(db).get("sent", 0) < N and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert statuses(db) == {"sent": N}
        stored = sink.messages()
        assert len(stored) == N                       # every message in the mailbox, none twice
        ids_in_mailbox = set()
        for path in stored:
            head = path.read_bytes().split(b"\r\n\r\n", 1)[0].decode()
            ids_in_mailbox.add(next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                                    if line.lower().startswith("message-id:")))
        assert ids_in_mailbox == {f"<{r.message_id}@nurture.borderbridge.example>" for r in ids}
        # The replays after restart carried the same Message-ID and were dropped by the receiver.
        print(f"kill test: before kill {before}, sink received {sink.handler.received}, "
              f"replays dropped {sink.handler.duplicates}")
        assert sink.handler.duplicates >= 1
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        await scoring_server.stop(0)
        sink.stop()
        db.dispose()
