"""Scoring service wiring (process bootstrap only): database, the live model, the application core, the
servicers, and the outbox, ingest and inactivity loops."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import grpc

from nurture import redisconn, telemetry
from nurture.admin import AdminServicer, timeline_item
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.bus import Publisher
from nurture.clock import make_clock
from nurture.db import DriverWrites, open_database
from nurture.rpc import start_server
from nurture.service import Running
from nurture.settings import Settings
from services.scoring.app.collect_stream import CollectDeadLetters, CollectStream
from services.scoring.app.core import ScoringCore
from services.scoring.app.ingest import IngestQueue
from services.scoring.app.model_versions import ModelVersions
from services.scoring.app.outbox import Outbox
from services.scoring.app.visitors import VisitorDoor
from services.scoring.domain.addresses import address_lists
from services.scoring.domain.profiling import load_profiling
from services.scoring.domain.rules import load_model
from services.scoring.servicer import EchoServicer, ScoringServicer

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
_tracer = telemetry.tracer(__name__)


async def serve(settings: Settings) -> Running:
    address_lists()  # addresses.yaml: a bad file fails the start, not a later lead
    db = open_database(settings, service="scoring", migrations_dir=MIGRATIONS)
    redis = redisconn.connect(settings)
    clock = make_clock(settings)
    versions = ModelVersions(db.session)
    model = await db.run(versions.live, load_model(), clock.now())
    core = ScoringCore(db.session, model, DriverWrites(db.engine))

    async def refresh_model() -> None:
        """Another scoring process may have published a version: take it (checked every few seconds)."""
        live = await db.run(versions.published_version)
        if live is not None and live != core.model.version:
            core.model = await db.run(versions.model, live)
            log.info("scoring model version %d is live here too", live)
    outbox = Outbox(db, core, Publisher(redis, settings.bus_shards, settings.redis_wait_replicas))
    ingest = IngestQueue(core, clock, outbox, writers=1 if db.is_sqlite else settings.ingest_writers)
    visitors = VisitorDoor(db, core, ingest, outbox, clock, load_profiling())
    collect_stream = CollectStream(redis, settings.bus_shards, visitors.store_collected)
    visitors.stored_up_to_now = collect_stream.stored_up_to_now
    lapse_lock = asyncio.Lock()

    async def run_lapses() -> int:
        async with lapse_lock:
            # Leads that went quiet are a trace of their own (a Settle's child with a virtual clock):
            # their decay, the `engagement_lapsed` each announces and what the consumers do with it. A
            # sweep with nothing due (the real clock's, every 5 s) records none.
            due = await db.run(core.next_lapse)
            if due is None or due > clock.now():
                return 0
            done = 0
            with _tracer.start_as_current_span("lapses due"):
                while True:
                    n = await db.run(core.run_lapses, clock.now())
                    done += n
                    if n == 0:
                        return done

    async def settle() -> tuple[int, datetime | None]:
        await refresh_model()
        done = await collect_stream.drain()
        done += await run_lapses()
        done += await outbox.flush()
        return done, await db.run(core.next_lapse)

    async def timeline(lead_id: str, limit: int) -> list[common_pb2.TimelineItem]:
        items = await db.run(core.timeline, lead_id, limit)
        return [timeline_item(at=i.at, kind=i.kind, type=i.type, summary=i.summary,
                              details_json=json.dumps(i.details, default=str), id=i.id) for i in items]

    async def erase(lead_id: str, _hash: str) -> int:
        erased, _ = await db.run(core.erase_lead, lead_id, clock.now())
        outbox.sweep_soon()
        return int(erased)

    async def lapse_loop() -> None:
        # Real time only: with a virtual clock, lapses run when the gateway settles at their due time.
        while settings.clock == "real":
            try:
                await refresh_model()
                if await run_lapses():
                    outbox.sweep_soon()
            except Exception:
                log.exception("inactivity sweep failed; will retry")
            await asyncio.sleep(5)

    def register(server: grpc.aio.Server) -> Iterable[str]:
        scoring_pb2_grpc.add_ScoringServicer_to_server(ScoringServicer(db, core, clock, outbox, ingest,
                                                                       versions, visitors), server)
        scoring_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)
        admin = AdminServicer(settle=settle, timeline=timeline, erase=erase, stats=lambda: db.counters,
                              dead_letters=CollectDeadLetters(collect_stream, settings.bus_shards))
        common_pb2_grpc.add_AdminServicer_to_server(admin, server)
        return [scoring_pb2.DESCRIPTOR.services_by_name[n].full_name for n in ("Scoring", "Echo")] + [
            common_pb2.DESCRIPTOR.services_by_name["Admin"].full_name]

    handle = await start_server(name="scoring", port=settings.grpc_port, register=register,
                                mesh_tokens=settings.mesh_tokens)
    await outbox.flush()  # anything committed but not published before a crash

    async def close() -> None:
        await outbox.flush()
        await redis.aclose()
        db.close()

    return Running(server=handle, tasks=[asyncio.create_task(outbox.run()), asyncio.create_task(lapse_loop()),
                                                asyncio.create_task(ingest.run()),
                                                asyncio.create_task(collect_stream.run())],
                   close=close)
