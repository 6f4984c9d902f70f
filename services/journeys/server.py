"""Journeys service wiring (process bootstrap only); the gRPC methods are in servicer.py.

serve() opens SQL (Alembic migrations under ./migrations), Redis, the clock, takes the partitions of the
leads this replica owns (all of them when it is alone; nurture.partitions), syncs the playbook files into
versioned definitions, recovers timers, and starts the lease keeper (always), the bus consumer and the
timer loop (real clock only: with a virtual clock only Admin.Settle moves work, so runs are deterministic).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import grpc

from nurture import redisconn, times
from nurture.admin import AdminServicer, TimerQueue, Timers, timeline_item
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.journeys.v1 import journeys_pb2, journeys_pb2_grpc
from nurture.bus import BusDeadLetters, Consumer
from nurture.clock import make_clock
from nurture.db import open_database
from nurture.partitions import Ownership, replica_name
from nurture.rpc import start_server
from nurture.service import Running
from nurture.settings import Settings
from services.journeys import simulation, storage
from services.journeys.app.runner import JourneysRuntime
from services.journeys.clients import Clients
from services.journeys.domain.calendar import load_calendar
from services.journeys.domain.definitions import read_settings
from services.journeys.servicer import JourneysServicer
from services.journeys.timers import TimerStore

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")


async def serve(settings: Settings) -> Running:
    db = open_database(settings, service="journeys", migrations_dir=MIGRATIONS)
    client = redisconn.connect(settings)
    clock = make_clock(settings)
    clients = Clients(settings)
    # A lead's bus shard and timer shard fall in one partition when the partitions divide both counts.
    ownership = Ownership(client, db, storage.PARTITIONS, group="journeys",
                          partitions=math.gcd(settings.bus_shards, settings.timer_shards),
                          owner=replica_name(settings.replica), lease_ms=settings.partition_lease_ms)
    timer_store = TimerStore(client, settings.timer_shards, settings.redis_wait_replicas)
    runtime = JourneysRuntime(db=db, timers=timer_store, clock=clock, clients=clients,
                              settings=read_settings(), calendar=load_calendar(), ownership=ownership)
    ownership.on_change(runtime.on_partitions)
    await ownership.tick()  # alone, a replica owns every partition before it serves, as one process did
    await runtime.start()
    consumer = Consumer(client, group="journeys", shards=settings.bus_shards, handler=runtime.handle_messages,
                        ownership=ownership)

    async def settle() -> tuple[int, datetime | None]:
        return await runtime.settle(consumer.drain)

    async def timeline(lead_id: str, limit: int) -> list[common_pb2.TimelineItem]:
        items = []
        for t in await runtime.timeline(lead_id, limit):
            details = {"journey": t.journey, "version": t.version, "step_from": t.step_from, "step_to": t.step_to,
                       "stage": t.stage, "rule": t.rule, "facts": json.loads(t.facts or "{}")}
            at = times.utc(t.at)
            items.append(timeline_item(at=at, kind="journey", type=t.type, summary=t.summary,
                                       details_json=json.dumps(details, default=str), id=f"journey:{t.id}"))
        return items

    async def erase(lead_id: str, email_hash: str) -> int:
        return await runtime.erase(lead_id)

    async def timers() -> Timers:
        now = clock.now()
        store = runtime.timers
        pending, due, first = await store.pending(), await store.due_count(now), await store.next_due()
        return Timers(now=now, queues=[TimerQueue("journey steps", pending, due, first)])

    def register(server: grpc.aio.Server) -> Iterable[str]:
        journeys_pb2_grpc.add_JourneysServicer_to_server(JourneysServicer(runtime), server)
        common_pb2_grpc.add_AdminServicer_to_server(AdminServicer(
            settle=settle, timeline=timeline, erase=erase, stats=lambda: db.counters, timers=timers,
            dead_letters=BusDeadLetters(consumer)), server)
        return [journeys_pb2.DESCRIPTOR.services_by_name["Journeys"].full_name,
                common_pb2.DESCRIPTOR.services_by_name["Admin"].full_name]

    handle = await start_server(name="journeys", port=settings.grpc_port, register=register,
                                mesh_tokens=settings.mesh_tokens)

    async def warm_simulation() -> None:
        # Off the loop: the simulation's fork server starting is a process start and an import.
        await asyncio.to_thread(simulation.warm)

    tasks: list[asyncio.Task[None]] = [asyncio.create_task(ownership.run(), name="journeys-partitions"),
                                       asyncio.create_task(warm_simulation(), name="journeys-warm")]
    if settings.clock != "virtual":
        tasks.append(asyncio.create_task(consumer.run(), name="journeys-bus"))
        tasks.append(asyncio.create_task(runtime.timer_loop(), name="journeys-timers"))

    async def close() -> None:
        await ownership.release_all()  # the other replicas take its partitions now, not after the lease
        await clients.close()
        await client.aclose()
        db.close()

    return Running(server=handle, tasks=tasks, close=close)
