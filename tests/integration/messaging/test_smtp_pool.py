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
    assert (row.status, row.attempts) == ("sent", 1), row.reason
    assert inproc.mails_to("ana@example.com") == 1


def test_an_internationalized_address_goes_with_smtputf8(tmp_path: Path) -> None:
    """A lead's address with a non-ASCII local part (RFC 6531) is valid (email-validator takes it): it goes
    with SMTPUTF8, and a non-ASCII domain goes in IDNA, where smtplib raised UnicodeEncodeError."""
    sink = SmtpSink(tmp_path / "mail").start()
    pool = SmtpPool(sink.url, size=1)
    try:
        result = pool.send("a@example.com", "zoë.müller@exämple.de", _mail(1))
        assert result.ok, result.reason
        assert pool.send("a@example.com", "ana@exämple.de", _mail(2)).ok
        assert pool.send("a@example.com", "b@example.com", _mail(3)).ok   # the connection is still good
        assert sorted(sink.handler.envelopes) == ["<pool-1@test>", "<pool-2@test>", "<pool-3@test>"]
        tos = [p.read_bytes().decode("utf-8").splitlines()[0] for p in sink.messages()]
        assert sorted(tos) == sorted(["X-Sink-Envelope-To: zoë.müller@xn--exmple-cua.de",
                                      "X-Sink-Envelope-To: ana@xn--exmple-cua.de",
                                      "X-Sink-Envelope-To: b@example.com"])
    finally:
        pool.close()
        sink.stop()


def test_a_server_without_smtputf8_refuses_that_address_alone(tmp_path: Path) -> None:
    """Against a server that does not offer SMTPUTF8 the message fails for good (not retried forever), and
    the same connection carries the next one."""
    plain = SmtpSink(tmp_path / "plain", smtputf8=False).start()
    pool = SmtpPool(plain.url, size=1)
    try:
        refused = pool.send("a@example.com", "zoë@example.com", _mail(1))
        assert (refused.ok, refused.permanent, refused.hard_bounce) == (False, True, False)
        assert "SMTPUTF8" in refused.reason
        assert pool.send("a@example.com", "b@example.com", _mail(2)).ok
        assert plain.handler.received == 1
    finally:
        pool.close()
        plain.stop()


@pytest.mark.anyio
async def test_an_internationalized_address_does_not_hold_up_the_batch(inproc: InProc) -> None:
    """One lead's address beyond ASCII in a batch: every message of the batch goes (the whole batch had
    raised, and the settle with it, so no mail went out for anyone)."""
    inproc.scoring.add(make_lead("zoe", email="zoë.müller@exämple.de", timezone="UTC"))
    inproc.scoring.add(make_lead("ana", timezone="UTC"))
    await inproc.send("zoe", "lead_magnet.email_01")
    await inproc.send("ana", "lead_magnet.email_01")
    await inproc.settle()
    for lead_id in ("zoe", "ana"):
        row = (await inproc.messages(lead_id))["lead_magnet.email_01"]
        assert row.status == "sent", (lead_id, row.reason)
    assert inproc.mails_to("ana@example.com") == 1
    assert inproc.mails_to("zoë.müller@xn--exmple-cua.de") == 1


def test_the_sink_that_make_run_starts_offers_smtputf8(tmp_path: Path) -> None:
    """`nurture up` runs the sink as `python -m services.messaging.smtp_sink`: that one takes the address too."""
    import subprocess
    import sys

    from tests.conftest import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services.messaging.smtp_sink", "--port", str(port),
                             "--dir", str(tmp_path / "mail")], stdout=subprocess.PIPE, text=True)
    pool = SmtpPool(f"smtp://127.0.0.1:{port}", size=1)
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        result = pool.send("a@example.com", "zoë@example.com", _mail(1))
        assert result.ok, result.reason
        assert len(list((tmp_path / "mail").glob("*.eml"))) == 1
    finally:
        pool.close()
        proc.terminate()
        proc.wait(timeout=10)
