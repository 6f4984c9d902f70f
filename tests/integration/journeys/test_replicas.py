"""Two journeys replicas as real processes sharing the partitions of the leads (nurture.partitions), in
virtual time: one is SIGKILLed in the middle of a batch (its sends on the wire, nothing committed) and
the other takes its partitions when the lease runs out; one is SIGSTOPped mid-batch past its lease, the
other does its work, and when it wakes up its commit is refused. Either way every lead gets each step
once: a replayed send carries the same dedupe key and messaging answers `duplicate`.

Replicas are meant for PostgreSQL (NURTURE_TEST_DATABASE_URL); on SQLite the two processes share one
file, whose single writer serialises them the same way, so the default pass runs them too."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import redis
import sqlalchemy as sa

from nurture import redisconn
from nurture.api.common.v1 import common_pb2_grpc
from nurture.api.messaging.v1 import messaging_pb2
from nurture.bus import Publisher
from nurture.busmessage import BusMessage, LeadSnapshot
from nurture.clock import VirtualClock
from nurture.partitions import lease_key, replica_name
from nurture.settings import Settings
from tests.conftest import free_port, mesh_channel
from tests.helpers.processes import spawn_service, wait_serving
from tests.integration.journeys.fakes import Recorder, lead, settle, start_fakes

pytestmark = [pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(240)]
LEADS = 200
EXPECTED_STEPS = ["email_01", "email_02", "email_03", "email_04"]  # family emails at 0, 1, 2 and 4 days
END = timedelta(days=4, hours=2)  # past the fourth (the pause test starts day 1 a minute late), before the fifth
LEASE_MS = 1500
PARTITIONS = 8  # gcd of the default 8 bus and 16 timer shards


@dataclass
class Replicas:
    settings: Settings
    rec: Recorder
    clock: VirtualClock
    logs: Path
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    admins: dict[int, common_pb2_grpc.AdminStub] = field(default_factory=dict)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def log(self, replica: int) -> str:
        return (self.logs / f"journeys-{replica}.log").read_text(errors="replace")

    async def start(self, replica: int) -> None:
        port = free_port()
        own = self.settings.with_overrides(grpc_port=port, replica=str(replica))
        self.procs[replica] = spawn_service("journeys", own, log=self.logs / f"journeys-{replica}.log")
        await wait_serving(f"127.0.0.1:{port}")
        channel = mesh_channel(f"127.0.0.1:{port}")
        self.channels.append(channel)
        self.admins[replica] = common_pb2_grpc.AdminStub(channel)

    def holders(self) -> Counter[str]:
        r = redis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        try:
            return Counter(str(r.get(lease_key("journeys", p)) or "") for p in range(PARTITIONS))
        finally:
            r.close()

    async def wait_holders(self, expected: dict[int, int], timeout: float = 30) -> None:
        """Until the leases are held so: replica -> how many partitions."""
        want = Counter({replica_name(str(i)): n for i, n in expected.items()})
        deadline = time.monotonic() + timeout
        while self.holders() != want:
            assert time.monotonic() < deadline, (self.holders(), want)
            await asyncio.sleep(0.1)

    async def advance_to(self, end: datetime, replicas: list[int]) -> None:
        """As the gateway does: settle every replica until none works, then move time to the next due
        moment, up to `end`."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            work, due = 0, []
            for i in replicas:
                reply = await settle(self.admins[i])
                work += reply.work_done
                if reply.has_next_due:
                    due.append(reply.next_due_at.ToDatetime().replace(tzinfo=UTC))
            if work:
                continue
            nxt = min(due, default=None)
            if nxt is not None and nxt <= self.clock.now():
                await asyncio.sleep(0.1)  # due, but in no replica's partitions yet (a hand-over)
                continue
            if nxt is not None and nxt <= end:
                self.clock.set(nxt)
                continue
            self.clock.set(max(end, self.clock.now()))
            return
        raise AssertionError("the replicas did not settle")


@pytest.fixture
async def replicas(settings: Settings, tmp_path: Path) -> AsyncIterator[Replicas]:
    rec = Recorder()
    mport, cport = free_port(), free_port()
    messaging, crm = await start_fakes(rec, messaging_port=mport, crm_port=cport)
    settings = settings.with_overrides(messaging_addr=f"127.0.0.1:{mport}", crm_sync_addr=f"127.0.0.1:{cport}",
                                       partition_lease_ms=LEASE_MS)
    clock = VirtualClock(redis.Redis.from_url(settings.redis_url))
    running = Replicas(settings, rec, clock, tmp_path)
    try:
        await running.start(0)
        await running.start(1)
        await running.wait_holders({0: 4, 1: 4})
        yield running
    finally:
        for p in running.procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.terminate()
                p.wait(10)
        for channel in running.channels:
            await channel.close()
        await messaging.stop(0)
        await crm.stop(0)


async def _publish(settings: Settings, at: datetime, leads: list[str], etype: str) -> None:
    client = redisconn.connect(settings)
    try:
        await Publisher(client, settings.bus_shards).publish([
            BusMessage(id=f"{etype}-{lead_id}", lead_id=lead_id, type=etype, occurred_at=at.isoformat(),
                       lead=LeadSnapshot.from_dict(lead(lead_id, "family"))) for lead_id in leads])
    finally:
        await client.aclose()


async def _publish_leads(settings: Settings, at: datetime) -> None:
    await _publish(settings, at, [f"r{n:04d}" for n in range(LEADS)], "lead_created")


def _stop_on_first_send(rec: Recorder, pid: int, sig: signal.Signals) -> asyncio.Event:
    """Signal `pid` when the first send arrives: its batch is then on the wire, its commit not made."""
    hit = asyncio.Event()

    def hook(_request: messaging_pb2.SendRequest) -> None:
        if not hit.is_set():
            os.kill(pid, sig)
            hit.set()
    rec.on_send = hook
    return hit


def _assert_each_step_once(r: Replicas, converted: frozenset[str] = frozenset()) -> int:
    """Every lead got each step once; those `converted` after email_02 got no more."""
    family = [s for s in r.rec.sends if s.journey == "family"]
    keys = {s.dedupe_key for s in family}
    per_step = Counter((s.lead_id, s.step) for s in {s.dedupe_key: s for s in family}.values())
    assert sorted(step for (who, step) in per_step if who in converted) == sorted(
        ["email_01", "email_02"] * len(converted)), [(w, st) for (w, st) in per_step if w in converted]
    expected = (LEADS - len(converted)) * len(EXPECTED_STEPS) + 2 * len(converted)
    assert len(keys) == expected, (len(keys), r.log(0)[-3000:], r.log(1)[-3000:])
    assert {step for _, step in per_step} == set(EXPECTED_STEPS)
    assert max(per_step.values()) == 1  # one key per lead and step: a replay is the same send
    engine = sa.create_engine(r.settings.database_url_for("journeys"))
    with engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT dedupe_key FROM journeys_step_runs WHERE journey = 'family' "
                                    "AND step_type = 'send'")).scalars().all()
        pending = conn.execute(sa.text("SELECT count(*) FROM journeys_enrollments WHERE journey = 'family' "
                                       "AND status = 'active'")).scalar_one()
    engine.dispose()
    assert len(runs) == len(set(runs)) == expected
    # Each lead not converted still waits for its next email: no timer lost, none gone past its step.
    assert pending == LEADS - len(converted)
    return len(family) - len(keys)


async def test_a_killed_replicas_partitions_pass_to_the_other_and_each_step_goes_once(replicas: Replicas) -> None:
    r = replicas
    start = r.clock.now()
    await _publish_leads(r.settings, start)
    killed = _stop_on_first_send(r.rec, r.procs[1].pid, signal.SIGKILL)
    with pytest.raises(grpc.aio.AioRpcError):  # replica 1 dies inside this call, mid-batch
        await settle(r.admins[1])
    assert killed.is_set()
    r.rec.on_send = None
    r.procs[1].wait(10)
    await r.wait_holders({0: PARTITIONS})  # after the lease: replica 0 owns everything
    await r.advance_to(start + END, [0])
    replayed = _assert_each_step_once(r)
    assert "took shard" in r.log(0) or "fire again" in r.log(0), r.log(0)[-3000:]
    print(f"sends replayed as duplicate={replayed}")


async def test_a_replica_paused_past_its_lease_is_fenced_when_it_wakes(replicas: Replicas) -> None:
    r = replicas
    start = r.clock.now()
    await _publish_leads(r.settings, start)
    await r.advance_to(start + timedelta(hours=12), [0, 1])  # day 0's emails from both replicas
    r.clock.set(start + timedelta(days=1, minutes=1))  # day 1's emails are due
    stopped = _stop_on_first_send(r.rec, r.procs[1].pid, signal.SIGSTOP)
    paused = asyncio.create_task(settle(r.admins[1]))
    await asyncio.wait_for(stopped.wait(), 60)
    r.rec.on_send = None
    # The leads of the batch it was sending when it stopped: it holds their state as it was before.
    asleep = frozenset(s.lead_id for s in r.rec.sends if s.step == "email_02")
    assert asleep
    await r.wait_holders({0: PARTITIONS})  # its leases ran out while it slept
    await r.advance_to(start + timedelta(days=1, hours=12), [0])  # replica 0 does day 1 for every lead
    # Those leads convert (the family journey's goal: no more emails). Had the sleeper's stale commit
    # gone through on waking, their enrolment would be back and they would get email_03.
    await _publish(r.settings, r.clock.now(), sorted(asleep), "subscribed")
    await r.advance_to(start + timedelta(days=1, hours=13), [0])
    os.kill(r.procs[1].pid, signal.SIGCONT)
    with contextlib.suppress(grpc.aio.AioRpcError):  # a Settle refused mid-way may answer with an error
        await asyncio.wait_for(paused, 60)
    assert "refused" in r.log(1), r.log(1)[-3000:]  # its batch, sent before the pause, did not commit
    await r.wait_holders({0: 4, 1: 4})  # awake, it asks for its share again
    await r.advance_to(start + END, [0, 1])
    replayed = _assert_each_step_once(r, asleep)
    print(f"converted while the replica slept={len(asleep)} sends replayed as duplicate={replayed}")
