"""crm_sync wiring (process bootstrap only): database, clients, the application core, the servicers,
Admin (Settle, Timeline, EraseLead), the bus consumer and the push loop."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import grpc

from nurture import redisconn
from nurture.admin import AdminServicer, CombinedDeadLetters, TimerQueue, Timers, timeline_item
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.crm_sync.v1 import crm_sync_pb2, crm_sync_pb2_grpc
from nurture.api.messaging.v1 import messaging_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.bus import BusDeadLetters, Consumer
from nurture.clock import make_clock
from nurture.db import open_database
from nurture.rpc import channel, start_server
from nurture.service import Running
from nurture.settings import Settings
from services.crm_sync import domain
from services.crm_sync import storage as st
from services.crm_sync.app.core import CrmSyncCore
from services.crm_sync.app.deadletters import PushDeadLetters
from services.crm_sync.clients import JourneysLookup
from services.crm_sync.connector import HubSpotConnector
from services.crm_sync.proposals import load_proposals
from services.crm_sync.servicer import (
    CrmAuth,
    CrmSyncServicer,
    EchoServicer,
    ProposalsServicer,
    SalesOpsServicer,
)

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
# Seconds the bus consumer waits after a small read for more (nurture.bus.Consumer's linger). Each
# batch costs a journeys call and a transaction reading its leads and their queued pushes whatever its
# size; the change feed and the pushes may lag the bus by this much (the platform's own default,
# 0.05 s, suits consumers a caller waits on, which this one is not).
BUS_LINGER_S = 0.2


async def serve(settings: Settings) -> Running:
    cfg = domain.load_config()
    db = open_database(settings, service="crm_sync", migrations_dir=MIGRATIONS)
    redis = redisconn.connect(settings)
    clock = make_clock(settings)
    scoring_channel = channel(settings.address_of("scoring"), settings.mesh_token)
    journeys_channel = channel(settings.address_of("journeys"), settings.mesh_token)
    messaging_channel = channel(settings.address_of("messaging"), settings.mesh_token)
    connector = HubSpotConnector(settings.crm_url)
    crm_name = next(iter(settings.crm_tokens), "crm")
    core = CrmSyncCore(db=db, clock=clock, cfg=cfg, connector=connector,
                       scoring=scoring_pb2_grpc.ScoringStub(scoring_channel),
                       journeys=JourneysLookup(journeys_channel), crm_name=crm_name,
                       virtual=settings.clock == "virtual", proposals_cfg=load_proposals(),
                       messaging=messaging_pb2_grpc.MessagingStub(messaging_channel),
                       link_secrets=(settings.secret, settings.secret_previous), public_url=settings.public_url,
                       replica=settings.replica, redis=redis)
    await core.recover()
    consumer = Consumer(redis, group="crm_sync", shards=settings.bus_shards, handler=core.handle_messages,
                        linger=BUS_LINGER_S)
    settle_lock = asyncio.Lock()

    async def settle() -> tuple[int, datetime | None]:
        async with settle_lock:
            return await core.settle(consumer.drain)

    async def timeline(lead_id: str, limit: int) -> list[common_pb2.TimelineItem]:
        items = await core.timeline(lead_id, limit)
        return [timeline_item(at=i.at, kind="crm", type=i.type, summary=i.summary,
                              details_json=json.dumps(i.details, default=str), id=i.id) for i in items]

    async def erase(lead_id: str, _hash: str) -> int:
        return await core.erase(lead_id)

    async def timers() -> Timers:
        now = clock.now()
        pending, due, first = await core.sql(lambda s: st.pending_summary(s, now))
        return Timers(now=now, queues=[TimerQueue("crm pushes", pending, due, first)])

    auth = CrmAuth(settings.crm_tokens)

    def register(server: grpc.aio.Server) -> Iterable[str]:
        crm_sync_pb2_grpc.add_CrmSyncServicer_to_server(CrmSyncServicer(core, auth), server)
        crm_sync_pb2_grpc.add_SalesOpsServicer_to_server(SalesOpsServicer(core), server)
        crm_sync_pb2_grpc.add_ProposalsServicer_to_server(ProposalsServicer(core), server)
        scoring_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)
        common_pb2_grpc.add_AdminServicer_to_server(AdminServicer(
            settle=settle, timeline=timeline, erase=erase, stats=lambda: db.counters, timers=timers,
            dead_letters=CombinedDeadLetters(("bus", BusDeadLetters(consumer)), ("crm_push", PushDeadLetters(core)))),
            server)
        return [crm_sync_pb2.DESCRIPTOR.services_by_name[n].full_name for n in ("CrmSync", "SalesOps", "Proposals")] + [
            scoring_pb2.DESCRIPTOR.services_by_name["Echo"].full_name,
            common_pb2.DESCRIPTOR.services_by_name["Admin"].full_name]

    handle = await start_server(name="crm_sync", port=settings.grpc_port, register=register,
                                mesh_tokens=settings.mesh_tokens,
                                # CRMs present their CRM token (CrmAuth, on every method), not the mesh key.
                                self_authenticated=[crm_sync_pb2.DESCRIPTOR.services_by_name["CrmSync"].full_name])
    tasks: list[asyncio.Task[None]] = []
    if settings.clock != "virtual":
        # With a virtual clock only Admin.Settle consumes the bus and performs pushes (deterministic runs).
        tasks.append(asyncio.create_task(consumer.run(), name="crm_sync-bus"))
        tasks.append(asyncio.create_task(core.push_loop(), name="crm_sync-push"))

    async def close() -> None:
        await connector.close()
        await scoring_channel.close()
        await journeys_channel.close()
        await messaging_channel.close()
        await redis.aclose()
        db.close()

    return Running(server=handle, tasks=tasks, close=close)
