"""Analytics gRPC methods: proto in, read model call, JSON report out; a bad query is INVALID_ARGUMENT."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import NoReturn

import grpc

from nurture.api.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from nurture.jsontypes import JsonValue
from nurture.rpcguard import guard_requests
from services.analytics import storage
from services.analytics.app.core import DEFAULT_DAYS, ReadModel
from services.analytics.domain import reports

MAX_WINDOW_DAYS = 3650


async def _abort(context: grpc.aio.ServicerContext, exc: reports.QueryError) -> NoReturn:
    # The parameter named as the gateway names a bad one of its own (`details.fields`).
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, json.dumps(
        {"code": "invalid", "message": str(exc), "details": {"field": exc.field, "fields": {exc.field: str(exc)}}}))
    raise AssertionError("unreachable")


def _reply(body: JsonValue) -> analytics_pb2.ReportReply:
    return analytics_pb2.ReportReply(report_json=json.dumps(body, default=str))


@guard_requests()
class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServicer):
    def __init__(self, model: ReadModel) -> None:
        self.m = model

    async def _answer(self, context: grpc.aio.ServicerContext, make: Callable[[], Awaitable[JsonValue]]
                      ) -> analytics_pb2.ReportReply:
        try:
            return _reply(await make())
        except reports.QueryError as exc:
            await _abort(context, exc)

    async def Engagement(self, request: analytics_pb2.EngagementRequest, context: grpc.aio.ServicerContext
                         ) -> analytics_pb2.ReportReply:
        async def make() -> JsonValue:
            group = request.group_by or "journey"
            if group not in reports.ENGAGEMENT_GROUPS:
                raise reports.QueryError("group_by", f"group_by must be one of {', '.join(reports.ENGAGEMENT_GROUPS)}")
            return {"rows": await self.m.read(storage.engagement_report, self.m.query(request.query), group)}
        return await self._answer(context, make)

    async def Progression(self, request: analytics_pb2.ProgressionRequest, context: grpc.aio.ServicerContext
                          ) -> analytics_pb2.ReportReply:
        async def make() -> JsonValue:
            unknown = sorted(set(request.tables) - set(reports.PROGRESSION_TABLES))
            if unknown:
                raise reports.QueryError("tables", f"tables must be among {', '.join(reports.PROGRESSION_TABLES)}")
            return await self.m.read(storage.progression_report, self.m.query(request.query), tuple(request.tables))
        return await self._answer(context, make)

    async def Attribution(self, request: analytics_pb2.AttributionRequest, context: grpc.aio.ServicerContext
                          ) -> analytics_pb2.ReportReply:
        async def make() -> JsonValue:
            model = request.model or "last"
            if model not in reports.ATTRIBUTION_MODELS:
                raise reports.QueryError("model", f"model must be one of {', '.join(reports.ATTRIBUTION_MODELS)}")
            window = request.window_days or DEFAULT_DAYS
            if not 1 <= window <= MAX_WINDOW_DAYS:
                raise reports.QueryError("window_days", f"window_days must be between 1 and {MAX_WINDOW_DAYS}")
            return await self.m.read(storage.attribution_report, self.m.query(request.query), model, window)
        return await self._answer(context, make)

    async def Sequences(self, request: analytics_pb2.SequencesRequest, context: grpc.aio.ServicerContext
                        ) -> analytics_pb2.ReportReply:
        async def make() -> JsonValue:
            length, unit = request.length or reports.SEQUENCE_LENGTHS[0], request.by or "template"
            if length not in reports.SEQUENCE_LENGTHS:
                lengths = ", ".join(map(str, reports.SEQUENCE_LENGTHS))
                raise reports.QueryError("length", f"length must be one of {lengths}")
            if unit not in reports.SEQUENCE_UNITS:
                raise reports.QueryError("by", f"by must be one of {', '.join(reports.SEQUENCE_UNITS)}")
            window = request.window_days or DEFAULT_DAYS
            if not 1 <= window <= MAX_WINDOW_DAYS:
                raise reports.QueryError("window_days", f"window_days must be between 1 and {MAX_WINDOW_DAYS}")
            return await self.m.read(storage.sequences_report, self.m.query(request.query), length, unit, window)
        return await self._answer(context, make)

    async def Roi(self, request: analytics_pb2.RoiRequest, context: grpc.aio.ServicerContext
                  ) -> analytics_pb2.ReportReply:
        async def make() -> JsonValue:
            return await self.m.read(storage.roi_report, self.m.query(request.query), self.m.costs)
        return await self._answer(context, make)

    async def Timeseries(self, request: analytics_pb2.TimeseriesRequest, context: grpc.aio.ServicerContext
                         ) -> analytics_pb2.ReportReply:
        async def make() -> JsonValue:
            metric, interval = request.metric or "sent", request.interval or "day"
            if metric not in reports.TIMESERIES_METRICS:
                raise reports.QueryError("metric", f"metric must be one of {', '.join(reports.TIMESERIES_METRICS)}")
            if interval not in ("day", "week"):
                raise reports.QueryError("interval", "interval must be day or week")
            points = await self.m.read(storage.timeseries_report, self.m.query(request.query), metric, interval)
            return {"metric": metric, "interval": interval, "points": points}
        return await self._answer(context, make)

    async def Deliverability(self, request: analytics_pb2.DeliverabilityRequest,
                             context: grpc.aio.ServicerContext) -> analytics_pb2.ReportReply:
        async def make() -> JsonValue:
            interval = request.interval or "day"
            if interval not in ("day", "week"):
                raise reports.QueryError("interval", "interval must be day or week")
            return await self.m.read(storage.deliverability_report, self.m.query(request.query),
                                     request.domain if request.HasField("domain") else None,
                                     request.provider if request.HasField("provider") else None, interval)
        return await self._answer(context, make)

    async def Rebuild(self, request: analytics_pb2.RebuildRequest, context: grpc.aio.ServicerContext
                      ) -> analytics_pb2.RebuildReply:
        return analytics_pb2.RebuildReply(facts=await self.m.read(storage.rebuild))


