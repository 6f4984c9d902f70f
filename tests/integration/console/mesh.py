"""A small running mesh for the console's tests: the real journeys service (and scoring, when asked)
over gRPC, messaging's and crm_sync's contracts played by the recording fakes, and leads that have run
through a journey: six families enter, two open their first email, one unsubscribes, nine days pass.
With `analytics_history`, the real analytics service too, once it has folded those bus messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import redis
from fastapi import FastAPI

from nurture import redisconn
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.bus import Publisher
from nurture.busmessage import BusMessage
from nurture.clock import VirtualClock
from nurture.settings import SERVICES, Settings
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.console.conftest import KEYS, app_for, console_settings
from tests.integration.journeys.fakes import Recorder, advance, lead, publish, settle, start_fakes

FAMILIES = 6


@dataclass
class ConsoleMesh:
    app: FastAPI
    client: httpx.AsyncClient  # the gateway app, in process
    settings: Settings  # with every service's address


@asynccontextmanager
async def console_mesh(settings: Settings, *, with_scoring: bool = False,
                       analytics_history: list[dict[str, Any]] | None = None) -> AsyncIterator[ConsoleMesh]:
    rec = Recorder()
    mport, cport = free_port(), free_port()
    messaging, crm = await start_fakes(rec, messaging_port=mport, crm_port=cport)
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    addrs.update(messaging_addr=f"127.0.0.1:{mport}", crm_sync_addr=f"127.0.0.1:{cport}")
    scoring = await start_service("scoring", settings.with_overrides(**addrs)) if with_scoring else None
    if scoring is not None:
        addrs["scoring_addr"] = scoring.address
    journeys = await start_service("journeys", settings.with_overrides(**addrs))
    addrs["journeys_addr"] = journeys.address
    analytics = None
    if analytics_history is not None:
        analytics = await start_service("analytics", settings)
        addrs["analytics_addr"] = analytics.address
    channel = mesh_channel(journeys.address)
    admin = common_pb2_grpc.AdminStub(channel)
    redis_client = redisconn.connect(settings)
    pub = Publisher(redis_client, settings.bus_shards)
    clock = VirtualClock(redis.Redis.from_url(settings.redis_url))
    app = app_for(console_settings(settings, **addrs))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        families = [lead(f"f-{i}", "family", profession="nurse") for i in range(FAMILIES)]
        if scoring is not None:  # the same people as profiles, so their lead pages open
            for person in families:
                r = await http.post("/v1/leads", headers={"Authorization": f"Bearer {KEYS['editor']}"},
                                    json={k: person[k] for k in ("id", "email", "attributes", "consent")}
                                    | {"first_name": "<b>Ana</b>", "segment": "family"})
                assert r.status_code in (200, 201), r.text
        for person in families:
            await publish(pub, clock, person, "lead_created")
        await settle(admin)
        for sent in [r for r in rec.sends if r.lead_id in ("f-0", "f-1")][:2]:
            await publish(pub, clock, families[int(sent.lead_id[-1])], "email_opened",
                          message_id=rec.delivered[sent.dedupe_key])
        await publish(pub, clock, families[FAMILIES - 1], "unsubscribed")
        await advance(admin, clock, 9 * 86400)
        if analytics is not None:
            await pub.publish([BusMessage.from_dict(m) for m in analytics_history])
            async with mesh_channel(analytics.address) as ch:
                await common_pb2_grpc.AdminStub(ch).Settle(common_pb2.SettleRequest(), timeout=60)
        yield ConsoleMesh(app=app, client=http, settings=settings.with_overrides(**addrs))
    await channel.close()
    await redis_client.aclose()
    await journeys.stop(grace=0.2)
    if analytics is not None:
        await analytics.stop(grace=0.2)
    if scoring is not None:
        await scoring.stop(grace=0.2)
    await messaging.stop(0)
    await crm.stop(0)
