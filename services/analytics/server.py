"""Analytics service wiring: SQL (Alembic migrations under ./migrations), Redis, the clock, the read
model, the gRPC server (Analytics + Admin), the lease keeper of the partitions this replica folds
(nurture.partitions: every one when it is alone) and the bus consumer (group `analytics`, reading the
owned partitions' shards; real clock only, with a virtual clock Admin.Settle drains the bus).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import grpc

from nurture import redisconn
from nurture.admin import AdminServicer
from nurture.api.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.bus import BusDeadLetters, Consumer
from nurture.clock import make_clock
from nurture.db import open_database
from nurture.partitions import Ownership, replica_name
from nurture.rpc import start_server
from nurture.service import Running
from nurture.settings import Settings
from services.analytics import storage, tables
from services.analytics.app.core import ReadModel, load_costs
from services.analytics.servicer import AnalyticsServicer

MIGRATIONS = Path(__file__).with_name("migrations")
FOLD_BATCH = 2000
FOLD_LINGER_S = 0.5
# At most this many messages a fold: a backlog over every shard was read as shards x FOLD_BATCH (16,000 and
# more, with the linger's second read) into one fold, which at niceness 10 on a busy host outlasted the
# partitions' lease (its renewal timed out meanwhile), was fenced, and was folded again shard by shard.
FOLD_MOST = 2 * FOLD_BATCH


async def serve(settings: Settings) -> Running:
    db = open_database(settings, service="analytics", migrations_dir=MIGRATIONS)
    client = redisconn.connect(settings)
    clock = make_clock(settings)
    ownership = Ownership(client, db, tables.partitions, group="analytics", partitions=settings.bus_shards,
                          owner=replica_name(settings.replica), lease_ms=settings.partition_lease_ms)
    model = ReadModel(db, clock, load_costs(), ownership)
    await model.read(storage.ensure_current)  # a release whose fold changed derives its tables again first
    # Large batches and a long linger: a report may lag the bus by a second, and each commit folds many
    # messages (the fold's CPU per message fell by a fifth from 500 to 2,000 a batch: bench/analytics.py).
    consumer = Consumer(client, group="analytics", shards=settings.bus_shards, handler=model.handle_messages,
                        batch=FOLD_BATCH, linger=FOLD_LINGER_S, ownership=ownership, most=FOLD_MOST)
    await ownership.tick()  # alone, a replica folds every partition from the start

    async def settle() -> tuple[int, datetime | None]:
        return await consumer.drain(), None

    async def timeline(lead_id: str, limit: int) -> list[common_pb2.TimelineItem]:
        return []  # analytics adds nothing to a lead's story: every fact it holds is told by its source

    async def erase(lead_id: str, _hash: str) -> int:
        return await model.erase(lead_id)

    def register(server: grpc.aio.Server) -> Iterable[str]:
        analytics_pb2_grpc.add_AnalyticsServicer_to_server(AnalyticsServicer(model), server)
        common_pb2_grpc.add_AdminServicer_to_server(
            AdminServicer(settle=settle, timeline=timeline, erase=erase, stats=lambda: db.counters,
                          dead_letters=BusDeadLetters(consumer)), server)
        return [analytics_pb2.DESCRIPTOR.services_by_name["Analytics"].full_name,
                common_pb2.DESCRIPTOR.services_by_name["Admin"].full_name]

    handle = await start_server(name="analytics", port=settings.grpc_port, register=register,
                                mesh_tokens=settings.mesh_tokens)
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(ownership.run(), name="analytics-partitions")]
    if settings.clock != "virtual":
        tasks.append(asyncio.create_task(consumer.run(), name="analytics-bus"))

    async def close() -> None:
        await ownership.release_all()
        await client.aclose()
        db.close()

    return Running(server=handle, tasks=tasks, close=close)

