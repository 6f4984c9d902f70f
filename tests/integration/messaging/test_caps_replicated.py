"""Messaging's frequency caps wait for a Redis replica as the bus does (NURTURE_REDIS_WAIT_REPLICAS): a
cap's count that a failover could lose would let a lead get a message over its cap. With the replica
stopped (as if cut off) nothing is sent: the message stays scheduled, its cap entry unconfirmed; once
the replica follows again it is sent once, its count on the replica when the mail goes."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from nurture.redisconn import NotReplicated, lead_key
from nurture.settings import Settings
from tests.integration.messaging.conftest import InProc
from tests.integration.messaging.harness import make_lead
from tests.redis_replicas import master_and_replica

pytestmark = pytest.mark.anyio


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[int, int, subprocess.Popen[bytes]]]:
    with master_and_replica(tmp_path) as servers:
        yield servers


@pytest.fixture
def redis_url(pair: tuple[int, int, subprocess.Popen[bytes]]) -> str:
    return f"redis://127.0.0.1:{pair[0]}/0"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(redis_wait_replicas=1)


async def test_a_cap_count_no_replica_holds_sends_nothing_until_one_does(
        inproc: InProc, pair: tuple[int, int, subprocess.Popen[bytes]]) -> None:
    _, replica_port, replica = pair
    follower = redis.Redis(port=replica_port)
    caps = lead_key("rp", "msg:nurture")
    inproc.scoring.add(make_lead("rp", timezone="UTC"))
    try:
        await inproc.send("rp", "family.email_01")
        os.kill(replica.pid, signal.SIGSTOP)
        with pytest.raises(NotReplicated, match="0 of 1 replicas"):
            await inproc.settle()
        assert inproc.mails_to("rp@example.com") == 0
        assert (await inproc.messages("rp"))["family.email_01"].status == "scheduled"
        os.kill(replica.pid, signal.SIGCONT)
        await inproc.settle()
        assert (await inproc.messages("rp"))["family.email_01"].status == "sent"
        assert inproc.mails_to("rp@example.com") == 1
        assert follower.zcard(caps) == 1  # counted once, though the script ran twice
    finally:
        follower.close()
