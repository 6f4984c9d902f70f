"""Analytics service wiring: gRPC in, storage/domain call, JSON report out; bad queries become
INVALID_ARGUMENT here.

serve() opens SQL (Alembic migrations under ./migrations), Redis and the clock, and starts the bus
consumer (real clock only; with a virtual clock Admin.Settle drains the bus). The consumer turns each
bus message into a Fact (`facts.from_bus`) and records a batch in one transaction, acked after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import grpc
import yaml

from nurture import redisconn
from nurture.admin import AdminServicer
from nurture.api.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.bus import Consumer
from nurture.clock import Clock, make_clock
from nurture.db import Database, open_database
from nurture.rpc import start_server
from nurture.rpcguard import guard_requests
from nurture.service import Running
from nurture.settings import Settings
from services.analytics import domain, storage
from services.analytics.facts import from_bus

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
COSTS = Path(__file__).with_name("costs.yaml")
DEFAULT_DAYS = 30
MAX_WINDOW_DAYS = 3650


def load_costs(path: Path = COSTS) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data.get("per_message", {}), dict):
        raise ValueError(f"{path}: per_message must map a channel to a cost")
    return data


class ReadModel:
    """The read model behind the servicer and the bus consumer."""

    def __init__(self, db: Database, clock: Clock, costs: dict[str, Any]) -> None:
        self.db = db
        self.clock = clock
        self.costs = costs

    async def handle_messages(self, messages: list[dict[str, Any]]) -> None:
        batch = [f for f in (from_bus(m) for m in messages) if f is not None]
        if batch:
            await self.db.run(self._in_session, storage.record, batch)

    def _in_session(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.db.session() as s:
            return fn(s, *args)

    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.db.run(self._in_session, fn, *args)

    def query(self, q: analytics_pb2.ReportQuery) -> storage.Query:
        end = q.to.ToDatetime(tzinfo=UTC) if q.HasField("to") else self.clock.now()
        start = getattr(q, "from").ToDatetime(tzinfo=UTC) if q.HasField("from") \
            else end - timedelta(days=DEFAULT_DAYS)
        if start > end:
            raise domain.QueryError("from must not be after to")
        return storage.Query(start=domain.day_of(start), end=domain.day_of(end),
                             segment=q.segment if q.HasField("segment") else None,
                             journey=q.journey if q.HasField("journey") else None)


async def _abort(context: grpc.aio.ServicerContext, message: str) -> NoReturn:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                        json.dumps({"code": "invalid", "message": message}))
    raise AssertionError("unreachable")


def _reply(body: Any) -> analytics_pb2.ReportReply:
    return analytics_pb2.ReportReply(report_json=json.dumps(body, default=str))


@guard_requests()
class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServicer):
    def __init__(self, model: ReadModel) -> None:
        self.m = model

    async def _answer(self, context: grpc.aio.ServicerContext, make: Callable[[], Awaitable[Any]]
                      ) -> analytics_pb2.ReportReply:
        try:
            return _reply(await make())
        except domain.QueryError as exc:
            await _abort(context, str(exc))

    async def Engagement(self, request: analytics_pb2.EngagementRequest, context: grpc.aio.ServicerContext
                         ) -> analytics_pb2.ReportReply:
        async def make() -> Any:
            group = request.group_by or "journey"
            if group not in domain.ENGAGEMENT_GROUPS:
                raise domain.QueryError(f"group_by must be one of {', '.join(domain.ENGAGEMENT_GROUPS)}")
            return {"rows": await self.m.read(storage.engagement_report, self.m.query(request.query), group)}
        return await self._answer(context, make)

    async def Progression(self, request: analytics_pb2.ProgressionRequest, context: grpc.aio.ServicerContext
                          ) -> analytics_pb2.ReportReply:
        async def make() -> Any:
            return await self.m.read(storage.progression_report, self.m.query(request.query))
        return await self._answer(context, make)

    async def Attribution(self, request: analytics_pb2.AttributionRequest, context: grpc.aio.ServicerContext
                          ) -> analytics_pb2.ReportReply:
        async def make() -> Any:
            model = request.model or "last"
            if model not in domain.ATTRIBUTION_MODELS:
                raise domain.QueryError(f"model must be one of {', '.join(domain.ATTRIBUTION_MODELS)}")
            window = request.window_days or DEFAULT_DAYS
            if not 1 <= window <= MAX_WINDOW_DAYS:
                raise domain.QueryError(f"window_days must be between 1 and {MAX_WINDOW_DAYS}")
            return await self.m.read(storage.attribution_report, self.m.query(request.query), model, window)
        return await self._answer(context, make)

    async def Roi(self, request: analytics_pb2.RoiRequest, context: grpc.aio.ServicerContext
                  ) -> analytics_pb2.ReportReply:
        async def make() -> Any:
            return await self.m.read(storage.roi_report, self.m.query(request.query), self.m.costs)
        return await self._answer(context, make)

    async def Timeseries(self, request: analytics_pb2.TimeseriesRequest, context: grpc.aio.ServicerContext
                         ) -> analytics_pb2.ReportReply:
        async def make() -> Any:
            metric, interval = request.metric or "sent", request.interval or "day"
            if metric not in domain.TIMESERIES_METRICS:
                raise domain.QueryError(f"metric must be one of {', '.join(domain.TIMESERIES_METRICS)}")
            if interval not in ("day", "week"):
                raise domain.QueryError("interval must be day or week")
            points = await self.m.read(storage.timeseries_report, self.m.query(request.query), metric, interval)
            return {"metric": metric, "interval": interval, "points": points}
        return await self._answer(context, make)

    async def Rebuild(self, request: analytics_pb2.RebuildRequest, context: grpc.aio.ServicerContext
                      ) -> analytics_pb2.RebuildReply:
        return analytics_pb2.RebuildReply(facts=await self.m.read(storage.rebuild))


async def serve(settings: Settings) -> Running:
    db = open_database(settings, service="analytics", migrations_dir=MIGRATIONS)
    client = redisconn.connect(settings)
    clock = make_clock(settings.clock, settings.redis_url)
    model = ReadModel(db, clock, load_costs())
    consumer = Consumer(client, group="analytics", shards=settings.bus_shards, handler=model.handle_messages)

    async def settle() -> tuple[int, datetime | None]:
        return await consumer.drain(), None

    async def timeline(lead_id: str, limit: int) -> list[common_pb2.TimelineItem]:
        return []  # analytics adds nothing to a lead's story: every fact it holds is told by its source

    async def erase(lead_id: str, _hash: str) -> int:
        return int(await model.read(storage.erase_lead, lead_id))

    def register(server: grpc.aio.Server) -> Iterable[str]:
        analytics_pb2_grpc.add_AnalyticsServicer_to_server(AnalyticsServicer(model), server)
        common_pb2_grpc.add_AdminServicer_to_server(
            AdminServicer(settle=settle, timeline=timeline, erase=erase, stats=lambda: db.counters), server)
        return [analytics_pb2.DESCRIPTOR.services_by_name["Analytics"].full_name,
                common_pb2.DESCRIPTOR.services_by_name["Admin"].full_name]

    handle = await start_server(name="analytics", port=settings.grpc_port, register=register,
                                mesh_tokens=settings.mesh_tokens)
    tasks: list[asyncio.Task[None]] = []
    if settings.clock != "virtual":
        tasks.append(asyncio.create_task(consumer.run(), name="analytics-bus"))

    async def close() -> None:
        await client.aclose()
        db.close()

    return Running(server=handle, tasks=tasks, close=close)

