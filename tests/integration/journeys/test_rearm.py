"""Redis lost the timers (a flush, a failover without persistence): SQL is the record, and a restarted
journeys service re-arms every active enrolment's timer from it, so no step is lost. The kill test keeps
Redis' data, so this is the only test where re-arming has to do the work."""

from __future__ import annotations

import pytest
import redis

from nurture.api.common.v1 import common_pb2_grpc
from tests.conftest import mesh_channel, start_service
from tests.integration.journeys.conftest import Mesh
from tests.integration.journeys.fakes import advance, lead, publish, settle

pytestmark = pytest.mark.anyio
DAY = 86400


def timer_members(url: str) -> set[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return {m for key in client.scan_iter("nurture:timers*") for m in client.zrange(key, 0, -1)}
    finally:
        client.close()


def forget_timers(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter("nurture:timers*"):
            client.delete(key)
    finally:
        client.close()


async def test_timers_lost_from_redis_are_re_armed_from_sql_at_start(mesh: Mesh) -> None:
    for lead_id in ("ra-1", "ra-2"):
        await publish(mesh.pub, mesh.clock, lead(lead_id, "family"), "lead_created")
    await settle(mesh.admin)
    armed = timer_members(mesh.settings.redis_url)
    # Each lead: its family step (email_02 tomorrow), the trigger tables' listener and its inactivity check.
    assert {m.split(b"|")[0] for m in armed} == {b"ra-1", b"ra-2"} and len(armed) >= 4
    forget_timers(mesh.settings.redis_url)
    await advance(mesh.admin, mesh.clock, DAY + 60)
    assert [r.step for r in mesh.rec.sends] == ["email_01", "email_01"]   # nothing left to fire

    await mesh.running.stop(grace=0.2)
    restarted = await start_service("journeys", mesh.settings)
    channel = mesh_channel(restarted.address)
    try:
        assert timer_members(mesh.settings.redis_url) >= armed   # everything that was pending, again
        admin = common_pb2_grpc.AdminStub(channel)
        await settle(admin)          # email_02 was due while its timer was gone: it runs now
        await advance(admin, mesh.clock, DAY)
        for lead_id in ("ra-1", "ra-2"):
            steps = [r.step for r in mesh.rec.sends if r.lead_id == lead_id and r.journey == "family"]
            assert steps == ["email_01", "email_02", "email_03"], steps
    finally:
        await channel.close()
        await restarted.stop(grace=0.2)
