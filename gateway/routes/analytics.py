"""Analytics (docs/API.md "Analytics"): engagement, progression, attribution, ROI and time series from
the analytics service's read model; every report as JSON, or CSV with `format=csv`."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from fastapi import APIRouter, Depends, Query, Response

from gateway.convert import parse_time
from gateway.deps import ApiError, Mesh, mesh, require_key
from nurture.api.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from nurture.rpc import LONG_DEADLINE_S

router = APIRouter(tags=["analytics"], dependencies=[Depends(require_key)])
FORMATS = ("json", "csv")
ROI_TABLES = ("by_journey", "by_path")
PROGRESSION_TABLES = ("stages", "lifecycle", "qualification", "time_to_conversion", "content_gaps",
                      "score_progression")
ATTRIBUTION_TABLES = ("by_template", "by_topic", "by_format")


def _stub(m: Mesh) -> analytics_pb2_grpc.AnalyticsStub:
    return analytics_pb2_grpc.AnalyticsStub(m.channel("analytics"))


def _query(from_: str | None, to: str | None, segment: str | None, journey: str | None,
           output: str) -> analytics_pb2.ReportQuery:
    if output not in FORMATS:
        raise ApiError(422, "invalid", "format must be json or csv", {"field": "format"})
    q = analytics_pb2.ReportQuery()
    if from_:
        getattr(q, "from").FromDatetime(parse_time(from_, "from"))
    if to:
        q.to.FromDatetime(parse_time(to, "to"))
    if segment is not None:
        q.segment = segment
    if journey is not None:
        q.journey = journey
    return q


def _csv(rows: list[dict[str, Any]]) -> Response:
    """The rows as CSV (RFC 4180), columns in the order of the JSON rows; an empty table is its header."""
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\r\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8")


def _answer(reply: analytics_pb2.ReportReply, output: str, table: str) -> Any:
    body = json.loads(reply.report_json)
    if output == "csv":
        return _csv(body[table])
    return body


def _choice(value: str, allowed: tuple[str, ...], field: str) -> str:
    if value not in allowed:
        raise ApiError(422, "invalid", f"{field} must be one of {', '.join(allowed)}", {"field": field})
    return value


@router.get("/v1/analytics/engagement", summary="Sent, delivered, unique opens and clicks, rates, by a dimension")
async def engagement(group_by: str = "journey", from_: str | None = Query(None, alias="from"), to: str | None = None,
                     segment: str | None = None, journey: str | None = None,
                     output: str = Query("json", alias="format"), m: Mesh = Depends(mesh)) -> Any:
    q = _query(from_, to, segment, journey, output)
    reply = await _stub(m).Engagement(analytics_pb2.EngagementRequest(query=q, group_by=group_by),
                                      timeout=LONG_DEADLINE_S)
    return _answer(reply, output, "rows")


@router.get("/v1/analytics/progression", summary="Stage conversion and velocity, lifecycle, weekly qualification")
async def progression(from_: str | None = Query(None, alias="from"), to: str | None = None,
                      segment: str | None = None, journey: str | None = None,
                      output: str = Query("json", alias="format"), table: str = "stages",
                      m: Mesh = Depends(mesh)) -> Any:
    q = _query(from_, to, segment, journey, output)
    reply = await _stub(m).Progression(analytics_pb2.ProgressionRequest(query=q), timeout=LONG_DEADLINE_S)
    return _answer(reply, output, _choice(table, PROGRESSION_TABLES, "table"))


@router.get("/v1/analytics/attribution", summary="Conversions and won revenue credited to content")
async def attribution(model: str = "last", window_days: int = 30, from_: str | None = Query(None, alias="from"),
                      to: str | None = None, segment: str | None = None, journey: str | None = None,
                      output: str = Query("json", alias="format"), table: str = "by_template",
                      m: Mesh = Depends(mesh)) -> Any:
    q = _query(from_, to, segment, journey, output)
    if not 1 <= window_days <= 3650:
        raise ApiError(422, "invalid", "window_days must be between 1 and 3650", {"field": "window_days"})
    reply = await _stub(m).Attribution(analytics_pb2.AttributionRequest(query=q, model=model,
                                                                        window_days=window_days),
                                       timeout=LONG_DEADLINE_S)
    return _answer(reply, output, _choice(table, ATTRIBUTION_TABLES, "table"))


@router.get("/v1/analytics/sequences", summary="The content sequences that preceded won deals, per segment")
async def sequences(length: int = 2, by: str = "template", window_days: int = 30,
                    from_: str | None = Query(None, alias="from"), to: str | None = None,
                    segment: str | None = None, journey: str | None = None,
                    output: str = Query("json", alias="format"), m: Mesh = Depends(mesh)) -> Any:
    q = _query(from_, to, segment, journey, output)
    _choice(str(length), ("2", "3"), "length")
    _choice(by, ("template", "topic"), "by")
    if not 1 <= window_days <= 3650:
        raise ApiError(422, "invalid", "window_days must be between 1 and 3650", {"field": "window_days"})
    reply = await _stub(m).Sequences(analytics_pb2.SequencesRequest(query=q, length=length, by=by,
                                                                    window_days=window_days),
                                     timeout=LONG_DEADLINE_S)
    return _answer(reply, output, "rows")


@router.get("/v1/analytics/roi", summary="Cost per nurtured lead, nurture-influenced revenue, ROI per journey")
async def roi(from_: str | None = Query(None, alias="from"), to: str | None = None, segment: str | None = None,
              journey: str | None = None, output: str = Query("json", alias="format"), table: str = "by_journey",
              m: Mesh = Depends(mesh)) -> Any:
    q = _query(from_, to, segment, journey, output)
    reply = await _stub(m).Roi(analytics_pb2.RoiRequest(query=q), timeout=LONG_DEADLINE_S)
    return _answer(reply, output, _choice(table, ROI_TABLES, "table"))


@router.get("/v1/analytics/timeseries", summary="One metric per day or week, for charts")
async def timeseries(metric: str = "sent", interval: str = "day", from_: str | None = Query(None, alias="from"),
                     to: str | None = None, segment: str | None = None, journey: str | None = None,
                     output: str = Query("json", alias="format"), m: Mesh = Depends(mesh)) -> Any:
    q = _query(from_, to, segment, journey, output)
    reply = await _stub(m).Timeseries(analytics_pb2.TimeseriesRequest(query=q, metric=metric, interval=interval),
                                      timeout=LONG_DEADLINE_S)
    return _answer(reply, output, "points")
