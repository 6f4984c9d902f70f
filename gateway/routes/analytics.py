"""Analytics (docs/API.md "Analytics"): engagement, progression, attribution, ROI, time series and
deliverability from
the analytics service's read model; every report as JSON, or CSV with `format=csv`."""

from __future__ import annotations

import csv
import io
import json

from fastapi import APIRouter, Depends, Query, Response

from gateway.convert import parse_bound
from gateway.deps import ApiError, Mesh, mesh, require_key
from gateway.known import check_report_filters
from gateway.shapes import DocumentedRoute
from nurture.api.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from nurture.jsontypes import JsonObject
from nurture.rpc import LONG_DEADLINE_S

router = APIRouter(tags=["analytics"], dependencies=[Depends(require_key)], route_class=DocumentedRoute)
FORMATS = ("json", "csv")
ROI_TABLES = ("by_journey", "by_path")
PROGRESSION_TABLES = ("stages", "lifecycle", "qualification", "time_to_conversion", "content_gaps",
                      "score_progression", "score_now", "segments")
ATTRIBUTION_TABLES = ("by_template", "by_topic", "by_format")
DELIVERABILITY_TABLES = ("by_provider", "by_domain", "points")
SEQUENCE_TABLES = ("rows", "rates")


def _invalid(field: str, message: str) -> ApiError:
    """A refused query parameter, named as the analytics service's own refusals and the gateway's
    validation name theirs (details.field and details.fields)."""
    return ApiError(422, "invalid", message, {"field": field, "fields": {field: message}})


def checked_window(window_days: int) -> int:
    """An attribution or sequence window in days (1 to 3650), or the 422 naming it: the API's reports
    and the console's take it alike."""
    if not 1 <= window_days <= 3650:
        raise _invalid("window_days", "window_days must be between 1 and 3650")
    return window_days


def _stub(m: Mesh) -> analytics_pb2_grpc.AnalyticsStub:
    return analytics_pb2_grpc.AnalyticsStub(m.channel("analytics"))


async def _query(from_: str | None, to: str | None, segment: str | None, journey: str | None,
                 output: str, m: Mesh, provider: str | None = None) -> analytics_pb2.ReportQuery:
    """The common query, or the 422 naming what is wrong with it: a bad range or format, or a filter
    that names no journey, segment or provider there is (gateway.known)."""
    if output not in FORMATS:
        raise _invalid("format", "format must be json or csv")
    await check_report_filters(m, journey=journey, segment=segment, provider=provider)
    q = analytics_pb2.ReportQuery()
    if from_:
        getattr(q, "from").FromDatetime(parse_bound(from_, "from"))
    if to:
        q.to.FromDatetime(parse_bound(to, "to", end=True))
    if segment is not None:
        q.segment = segment
    if journey is not None:
        q.journey = journey
    return q


# Each CSV table's columns, as docs/API.md names its rows: a table with no row in the range is still its
# header (a spreadsheet or a script reading columns by name got an empty body).
COLUMNS: dict[str, tuple[str, ...]] = {
    "rows": ("group", "sent", "delivered", "opened", "clicked", "unsubscribed", "bounced", "open_rate", "click_rate"),
    "stages": ("journey", "stage", "entered", "advanced", "conversion_rate", "median_hours", "p90_hours",
               "bottleneck", "why"),
    "lifecycle": ("from", "to", "count", "median_hours", "p90_hours", "conversion_rate"),
    "qualification": ("week", "mql", "sql", "trial", "customer", "recycled"),
    "time_to_conversion": ("journey", "conversions", "median_hours", "p90_hours"),
    "content_gaps": ("journey", "stage", "segment", "sent", "delivered", "opened", "clicked", "open_rate",
                     "click_rate", "gap", "why"),
    "score_progression": ("journey", "conversions", "score_at_entry", "score_at_conversion", "change"),
    "score_now": ("journey", "leads", "score_at_entry", "score_now", "change"),
    "segments": ("journey", "stage", "segment", "entered", "advanced", "conversion_rate", "median_hours",
                 "p90_hours"),
    "by_template": ("template", "topic", "format", "conversions", "revenue"),
    "by_topic": ("topic", "conversions", "revenue"),
    "by_format": ("format", "conversions", "revenue"),
    "by_journey": ("journey", "nurtured_leads", "cost", "cost_per_nurtured_lead", "influenced_revenue", "roi"),
    "by_path": ("path", "deals", "revenue", "average_deal"),
    "points": ("t", "value"),
    "sequences": ("segment", "sequence", "conversions", "share", "revenue", "average_deal"),  # its `rows`
    "rates": ("segment", "sequence", "engaged", "converted", "conversion_rate"),
}


def _csv(rows: list[JsonObject], table: str) -> Response:
    """The rows as CSV (RFC 4180), columns in the order of the JSON rows; an empty table is its header."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else list(COLUMNS[table]), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8")


def _answer(reply: analytics_pb2.ReportReply, output: str, table: str,
            columns: str | None = None) -> Response | JsonObject:
    """The report as JSON, or its `table` as CSV (headed by COLUMNS[columns or table] when it has no row).
    The analytics service builds the report (its rows are data: groups, stages, templates), and
    the OpenAPI builder documents it (gateway.openapi)."""
    body: JsonObject = json.loads(reply.report_json)
    if output == "csv":
        return _csv(body[table], columns or table)
    return body


def as_json(answer: Response | JsonObject) -> JsonObject:
    """A route's answer asked for with format=json (the console calls these routes)."""
    if isinstance(answer, Response):
        raise TypeError("a CSV answer where the JSON report was asked for")
    return answer


def as_csv(answer: Response | JsonObject) -> Response:
    """A route's answer asked for with format=csv."""
    if not isinstance(answer, Response):
        raise TypeError("a JSON report where CSV was asked for")
    return answer


def choice(value: str, allowed: tuple[str, ...], field: str) -> str:
    """`value` when it is one of `allowed`, else the 422 naming `field`: the API's report parameters and
    the console's alike."""
    if value not in allowed:
        raise _invalid(field, f"{field} must be one of {', '.join(allowed)}")
    return value


@router.get("/v1/analytics/engagement", summary="Sent, delivered, unique opens and clicks, rates, by a dimension")
async def engagement(group_by: str = "journey", from_: str | None = Query(None, alias="from"), to: str | None = None,
                     segment: str | None = None, journey: str | None = None,
                     output: str = Query("json", alias="format"), m: Mesh = Depends(mesh)) -> Response | JsonObject:
    q = await _query(from_, to, segment, journey, output, m)
    reply = await _stub(m).Engagement(analytics_pb2.EngagementRequest(query=q, group_by=group_by),
                                      timeout=LONG_DEADLINE_S)
    return _answer(reply, output, "rows")


@router.get("/v1/analytics/progression", summary="Stage conversion and velocity, lifecycle, weekly qualification")
async def progression(from_: str | None = Query(None, alias="from"), to: str | None = None,
                      segment: str | None = None, journey: str | None = None,
                      output: str = Query("json", alias="format"), table: str = "stages",
                      segments: bool = False, m: Mesh = Depends(mesh)) -> Response | JsonObject:
    q = await _query(from_, to, segment, journey, output, m)
    chosen = choice(table, PROGRESSION_TABLES, "table")
    # CSV is one table: only that one is computed. JSON: every table, the segment comparison when asked.
    tables = (chosen,) if output == "csv" else (PROGRESSION_TABLES if segments else ())
    return _answer(await _progression(q, tables, m), output, chosen)


async def _progression(q: analytics_pb2.ReportQuery, tables: tuple[str, ...], m: Mesh) -> analytics_pb2.ReportReply:
    reply: analytics_pb2.ReportReply = await _stub(m).Progression(
        analytics_pb2.ProgressionRequest(query=q, tables=tables), timeout=LONG_DEADLINE_S)
    return reply


async def progression_tables(from_: str | None, to: str | None, segment: str | None, journey: str | None,
                             tables: tuple[str, ...], m: Mesh) -> JsonObject:
    """The progression report with only `tables` computed (the others empty): the console's dashboard
    shows two of its six, and the won deals' joins behind the others are most of its cost."""
    body: JsonObject = json.loads((await _progression(await _query(from_, to, segment, journey, "json", m),
                                                          tables, m)).report_json)
    return body


@router.get("/v1/analytics/attribution", summary="Conversions and won revenue credited to content")
async def attribution(model: str = "last", window_days: int = 30, from_: str | None = Query(None, alias="from"),
                      to: str | None = None, segment: str | None = None, journey: str | None = None,
                      output: str = Query("json", alias="format"), table: str = "by_template",
                      m: Mesh = Depends(mesh)) -> Response | JsonObject:
    q = await _query(from_, to, segment, journey, output, m)
    checked_window(window_days)
    reply = await _stub(m).Attribution(analytics_pb2.AttributionRequest(query=q, model=model,
                                                                        window_days=window_days),
                                       timeout=LONG_DEADLINE_S)
    return _answer(reply, output, choice(table, ATTRIBUTION_TABLES, "table"))


@router.get("/v1/analytics/sequences",
            summary="The content sequences that preceded won deals, and each sequence's conversion rate, per segment")
async def sequences(length: int = 2, by: str = "template", window_days: int = 30,
                    from_: str | None = Query(None, alias="from"), to: str | None = None,
                    segment: str | None = None, journey: str | None = None,
                    output: str = Query("json", alias="format"), table: str = "rows",
                    m: Mesh = Depends(mesh)) -> Response | JsonObject:
    q = await _query(from_, to, segment, journey, output, m)
    chosen = choice(table, SEQUENCE_TABLES, "table")
    choice(str(length), ("2", "3"), "length")
    choice(by, ("template", "topic"), "by")
    checked_window(window_days)
    reply = await _stub(m).Sequences(analytics_pb2.SequencesRequest(query=q, length=length, by=by,
                                                                    window_days=window_days),
                                     timeout=LONG_DEADLINE_S)
    return _answer(reply, output, chosen, "sequences" if chosen == "rows" else chosen)


@router.get("/v1/analytics/roi", summary="Cost per nurtured lead, nurture-influenced revenue, ROI per journey")
async def roi(from_: str | None = Query(None, alias="from"), to: str | None = None, segment: str | None = None,
              journey: str | None = None, output: str = Query("json", alias="format"), table: str = "by_journey",
              m: Mesh = Depends(mesh)) -> Response | JsonObject:
    q = await _query(from_, to, segment, journey, output, m)
    reply = await _stub(m).Roi(analytics_pb2.RoiRequest(query=q), timeout=LONG_DEADLINE_S)
    return _answer(reply, output, choice(table, ROI_TABLES, "table"))


@router.get("/v1/analytics/timeseries", summary="One metric per day or week, for charts")
async def timeseries(metric: str = "sent", interval: str = "day", from_: str | None = Query(None, alias="from"),
                     to: str | None = None, segment: str | None = None, journey: str | None = None,
                     output: str = Query("json", alias="format"), m: Mesh = Depends(mesh)) -> Response | JsonObject:
    q = await _query(from_, to, segment, journey, output, m)
    reply = await _stub(m).Timeseries(analytics_pb2.TimeseriesRequest(query=q, metric=metric, interval=interval),
                                      timeout=LONG_DEADLINE_S)
    return _answer(reply, output, "points")


@router.get("/v1/analytics/deliverability",
            summary="Sent, delivered, bounced (hard, soft), complaints and rates by sending domain, provider, day")
async def deliverability(domain: str | None = None, provider: str | None = None, interval: str = "day",
                         from_: str | None = Query(None, alias="from"), to: str | None = None,
                         segment: str | None = None, journey: str | None = None,
                         output: str = Query("json", alias="format"), table: str = "by_provider",
                         m: Mesh = Depends(mesh)) -> Response | JsonObject:
    q = await _query(from_, to, segment, journey, output, m, provider)
    request = analytics_pb2.DeliverabilityRequest(query=q, interval=choice(interval, ("day", "week"), "interval"))
    if domain is not None:
        request.domain = domain
    if provider is not None:
        request.provider = provider
    reply = await _stub(m).Deliverability(request, timeout=LONG_DEADLINE_S)
    return _answer(reply, output, choice(table, DELIVERABILITY_TABLES, "table"))
