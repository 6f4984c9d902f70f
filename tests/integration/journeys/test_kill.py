"""Kill -9 the journeys process at random moments while thousands of leads move through their
journeys in virtual time, restart it, and finish: no step lost, none run twice, and the step counters
(kept in the transactions the killed process committed or lost) equal a recount of the record."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import redis
import sqlalchemy as sa

from nurture import redisconn
from nurture.api.common.v1 import common_pb2_grpc
from nurture.bus import Publisher
from nurture.busmessage import BusMessage, LeadSnapshot
from nurture.clock import VirtualClock
from nurture.settings import Settings
from tests.conftest import free_port, mesh_channel
from tests.helpers.processes import spawn_service, wait_serving
from tests.integration.journeys.counters import assert_counters_equal_recount
from tests.integration.journeys.fakes import Recorder, lead, settle, start_fakes

pytestmark = [pytest.mark.slow, pytest.mark.anyio]
LEADS = 2000
DAYS = 4
# Family journey emails due in the first 4 days: offsets 0, 1, 2 and 4 days (the last one at the end).
EXPECTED_STEPS = ["email_01", "email_02", "email_03", "email_04"]


async def test_killed_at_random_moments_no_step_lost_none_twice(settings: Settings, tmp_path: Path) -> None:
    rec = Recorder()
    mport, cport, jport = free_port(), free_port(), free_port()
    messaging, crm = await start_fakes(rec, messaging_port=mport, crm_port=cport)
    settings = settings.with_overrides(messaging_addr=f"127.0.0.1:{mport}", crm_sync_addr=f"127.0.0.1:{cport}",
                                       grpc_port=jport)
    address = f"127.0.0.1:{jport}"
    log = tmp_path / "journeys.log"
    client = redisconn.connect(settings)
    clock = VirtualClock(redis.Redis.from_url(settings.redis_url))
    start = clock.now()
    pub = Publisher(client, settings.bus_shards)
    procs = [spawn_service("journeys", settings, log=log)]
    kills = 0
    rng = random.Random(11)
    try:
        await wait_serving(address)
        for i in range(0, LEADS, 500):
            await pub.publish([BusMessage(id=f"created-{n}", lead_id=f"k{n:05d}", type="lead_created",
                                          occurred_at=start.isoformat(),
                                          lead=LeadSnapshot.from_dict(lead(f"k{n:05d}", "family")))
                               for n in range(i, min(LEADS, i + 500))])

        async def killer() -> None:
            nonlocal kills
            for _ in range(4):
                await asyncio.sleep(rng.uniform(0.4, 2.5))
                procs[-1].kill()
                procs[-1].wait()
                kills += 1
                procs.append(spawn_service("journeys", settings, log=log))

        killing = asyncio.create_task(killer())
        end = start + timedelta(days=DAYS)
        async with mesh_channel(address) as channel:
            admin = common_pb2_grpc.AdminStub(channel)
            while True:
                try:
                    reply = await settle(admin)
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
                    await wait_serving(address)
                    continue
                if reply.work_done:
                    continue
                nxt = reply.next_due_at.seconds + reply.next_due_at.nanos / 1e9
                if reply.has_next_due and nxt <= end.timestamp() and nxt > clock.now().timestamp():
                    clock.set(reply.next_due_at.ToDatetime().replace(tzinfo=start.tzinfo))
                    continue
                if not killing.done():
                    await asyncio.sleep(0.2)  # let the killer strike during the run, not after it
                    continue
                break
        await killing
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        await messaging.stop(0)
        await crm.stop(0)
        await client.aclose()

    assert kills == 4
    family = [r for r in rec.sends if r.journey == "family"]
    distinct = {r.dedupe_key for r in family}
    per_step = Counter((r.lead_id, r.step) for r in {r.dedupe_key: r for r in family}.values())
    # Not lost: every lead got every step due in the window.
    assert len(distinct) == LEADS * len(EXPECTED_STEPS), (len(distinct), log.read_text()[-2000:])
    assert {s for _, s in per_step} == set(EXPECTED_STEPS)
    # Not twice: one occurrence per lead and step (a replay repeats the same key; messaging says duplicate).
    assert max(per_step.values()) == 1
    engine = sa.create_engine(settings.database_url_for("journeys"))
    with engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT dedupe_key FROM journeys_step_runs WHERE journey = 'family' "
                                    "AND step_type = 'send'")).scalars().all()
    engine.dispose()
    assert len(runs) == len(set(runs)) == LEADS * len(EXPECTED_STEPS)
    cells = assert_counters_equal_recount(settings)
    sent: Counter[str] = Counter()
    for (j, _, step, m, status), n in cells.items():
        # A send replayed after a kill is recorded as messaging answered it: duplicate (it went once).
        if (j, m) == ("family", "run") and status in ("sent", "duplicate"):
            sent[step] += n
    assert sent == Counter(dict.fromkeys(EXPECTED_STEPS, LEADS)), sent
    print(f"kills={kills} sends={len(family)} replayed-as-duplicate={len(family) - len(distinct)}")
