"""The SMTP pool after the server restarted (issue #20): every pooled connection is dead, and the next
message still goes at once, on its first delivery attempt, on a fresh connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.messaging.smtp import SmtpPool
from services.messaging.smtp_sink import SmtpSink
from tests.integration.messaging.conftest import InProc
from tests.integration.messaging.harness import make_lead


def _mail(n: int) -> bytes:
    return (f"From: a@example.com\r\nTo: b@example.com\r\nMessage-ID: <pool-{n}@test>\r\n"
            f"Subject: {n}\r\n\r\nbody {n}\r\n").encode()


def test_a_restarted_server_costs_no_delivery_attempt(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path / "mail").start()
    pool = SmtpPool(sink.url, size=4)
    try:
        conns = [pool._borrow()[0] for _ in range(3)]   # three idle connections, as after parallel sends
        for c in conns:
            pool._give_back(c)
        assert pool.send("a@example.com", "b@example.com", _mail(1)).ok
        sink.stop()                      # the sink restarts: every pooled connection is now dead
        sink = SmtpSink(tmp_path / "mail", port=sink.port).start()
        result = pool.send("a@example.com", "b@example.com", _mail(2))
        assert result.ok, result.reason
        assert result.stale_connections == 3   # it met a dead one and dropped its siblings with it
        assert len(sink.messages()) == 2
        again = pool.send("a@example.com", "b@example.com", _mail(3))
        assert again.ok and again.stale_connections == 0
    finally:
        pool.close()
        sink.stop()


def test_a_server_that_is_down_is_a_transient_failure(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path / "mail").start()
    pool = SmtpPool(sink.url, size=2)
    assert pool.send("a@example.com", "b@example.com", _mail(1)).ok
    sink.stop()
    try:
        result = pool.send("a@example.com", "b@example.com", _mail(2))
        assert not result.ok and not result.permanent
        assert "connect" in result.reason
    finally:
        pool.close()


@pytest.mark.anyio
async def test_after_a_sink_restart_a_transactional_email_goes_on_its_first_attempt(inproc: InProc) -> None:
    # A batch spreads over every pooled connection, so eight idle connections are left behind.
    for n in range(16):
        inproc.scoring.add(make_lead(f"w{n}", timezone="UTC"))
        await inproc.send(f"w{n}", "lead_magnet.email_01")
    await inproc.settle()
    assert inproc.engine.smtp._idle.qsize() > 2
    inproc.sink.stop()       # the sink restarts on the same port: every pooled connection is dead
    inproc.sink.start()
    inproc.scoring.add(make_lead("ana", timezone="UTC"))
    await inproc.send("ana", "lead_magnet.email_01")
    await inproc.settle()
    row = (await inproc.messages("ana"))["lead_magnet.email_01"]
    assert (row["status"], row["attempts"]) == ("sent", 1), row["reason"]
    assert inproc.mails_to("ana@example.com") == 1
