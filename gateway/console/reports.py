"""The console's report pages beside the analytics dashboard: attribution and ROI, and deliverability
(charts with their tables, the reports' filters, CSV), and the A/B experiments of templates with their significance.

Each page reads through the function that answers the same /v1 call (gateway.routes.analytics,
gateway.routes.messaging), so a figure on a page is the API's figure for the same filters.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TypedDict
from urllib.parse import urlencode

import grpc
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.console.guard import guarded, mesh_of
from gateway.console.pages import pick, report_query
from gateway.console.render import page, shown
from gateway.console.session import Session
from gateway.deps import ApiError
from gateway.routes import analytics as analytics_api
from gateway.routes import messaging as messaging_api
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc

log = logging.getLogger(__name__)
router = APIRouter(prefix="/console", include_in_schema=False)

MODELS = ("last", "first", "linear")
INTERVALS = ("day", "week")
TABLES = analytics_api.ATTRIBUTION_TABLES
DIMENSION = {"by_template": "template", "by_topic": "topic", "by_format": "format"}
# Templates whose A/B reports are read at once: one AbReport each, kept few so a long catalog does not
# open a burst of calls on messaging.
AB_CONCURRENCY = 8


def _window(request: Request) -> int:
    raw = (request.query_params.get("window_days") or "30").strip()
    try:
        days = int(raw)
    except ValueError as exc:
        raise ApiError(422, "invalid", "window_days must be a whole number", {"field": "window_days"}) from exc
    return analytics_api.checked_window(days)


@router.get("/analytics/attribution")
async def attribution(request: Request) -> Response:
    """Conversions and won revenue credited to content under the chosen model (chart and table), and the
    ROI per journey (chart and table), from the same calls as /v1/analytics/attribution and /roi."""
    async def handler(_request: Request, current: Session) -> Response:
        m, f = mesh_of(request), report_query(request)
        model, table, window = pick(request, "model", MODELS), pick(request, "table", TABLES), _window(request)
        args = (f["from"], f["to"], f["segment"], f["journey"], "json")
        answers = await asyncio.gather(analytics_api.attribution(model, window, *args, table=table, m=m),
                                       analytics_api.roi(*args, m=m))
        credited, roi = (analytics_api.as_json(a) for a in answers)
        dimension = DIMENSION[table]
        rows = credited[table]
        # Revenue only: conversions (a handful) would be invisible on revenue's axis; the table has both.
        chart = {"labels": [shown(r[dimension], f"(no {dimension})") for r in rows],
                 "series": [{"label": "revenue", "values": [r["revenue"] for r in rows]}]}
        roi_chart = {"labels": [shown(r["journey"], "(no journey)") for r in roi["by_journey"]],
                     "series": [{"label": "cost", "values": [r["cost"] for r in roi["by_journey"]]},
                                {"label": "influenced revenue",
                                 "values": [r["influenced_revenue"] for r in roi["by_journey"]]}]}
        filters = {k: v or "" for k, v in f.items()}
        query = urlencode({k: v for k, v in filters.items() if v})
        return page("attribution.html", session=current, title="Attribution and ROI", filters=filters,
                    models=MODELS, tables=TABLES, model=model, table=table, window_days=window,
                    dimension=dimension, attribution=credited, rows=rows, roi=roi, query=query,
                    chart_json=json.dumps(chart), roi_chart_json=json.dumps(roi_chart))
    return await guarded(request, handler)


@router.get("/analytics/attribution.csv")
async def attribution_csv(request: Request) -> Response:
    """The attribution table shown (by template, topic or format) as the API's CSV."""
    async def handler(_request: Request, _current: Session) -> Response:
        f = report_query(request)
        answer = analytics_api.as_csv(await analytics_api.attribution(
            pick(request, "model", MODELS), _window(request), f["from"], f["to"], f["segment"], f["journey"],
            "csv", table=pick(request, "table", TABLES), m=mesh_of(request)))
        answer.headers["Content-Disposition"] = 'attachment; filename="attribution.csv"'
        return answer
    return await guarded(request, handler)


@router.get("/analytics/roi.csv")
async def roi_csv(request: Request) -> Response:
    """ROI per journey as the API's CSV."""
    async def handler(_request: Request, _current: Session) -> Response:
        f = report_query(request)
        answer = analytics_api.as_csv(await analytics_api.roi(f["from"], f["to"], f["segment"], f["journey"], "csv",
                                                              m=mesh_of(request)))
        answer.headers["Content-Disposition"] = 'attachment; filename="roi.csv"'
        return answer
    return await guarded(request, handler)


def _where_sent(request: Request) -> dict[str, str | None]:
    """Deliverability's own filters beside the common ones (empty means "not set")."""
    return {name: (request.query_params.get(name) or None) for name in ("domain", "provider")}


@router.get("/analytics/deliverability")
async def deliverability(request: Request) -> Response:
    """Emails sent, delivered, bounced and complained of per day (chart and table) and per mailbox provider
    and sending domain (chart and table), from the same call as /v1/analytics/deliverability."""
    async def handler(_request: Request, current: Session) -> Response:
        m, f, where = mesh_of(request), report_query(request), _where_sent(request)
        interval = pick(request, "interval", INTERVALS)
        report = analytics_api.as_json(await analytics_api.deliverability(
            where["domain"], where["provider"], interval, f["from"], f["to"], f["segment"], f["journey"], "json", m=m))
        points = report["points"]
        chart = {"labels": [r["t"] for r in points],
                 "series": [{"label": label, "values": [r[key] for r in points]} for key, label in (
                     ("delivered", "delivered"), ("hard_bounced", "hard bounces"), ("soft_bounced", "soft bounces"),
                     ("complaints", "complaints"))]}
        # Rates in percent per provider and domain: the guards' lines are rates, and volumes differ.
        dim_charts = {dim: json.dumps({
            "labels": [str(r[dim]) for r in report[f"by_{dim}"]],
            "series": [{"label": label, "values": [round(100 * (r[key] or 0), 2) for r in report[f"by_{dim}"]]}
                       for key, label in (("hard_bounce_rate", "hard bounce %"), ("soft_bounce_rate", "soft bounce %"),
                                          ("complaint_rate", "complaint %"))]}) for dim in ("provider", "domain")}
        filters = {k: v or "" for k, v in {**f, **where}.items()}
        query = urlencode({k: v for k, v in {**filters, "interval": interval}.items() if v})
        return page("deliverability.html", session=current, title="Deliverability", filters=filters,
                    intervals=INTERVALS, interval=interval, report=report, query=query,
                    chart_json=json.dumps(chart), dim_charts=dim_charts)
    return await guarded(request, handler)


@router.get("/analytics/deliverability.csv")
async def deliverability_csv(request: Request) -> Response:
    """A deliverability table shown (per day, provider or domain) as the API's CSV."""
    async def handler(_request: Request, _current: Session) -> Response:
        f, where = report_query(request), _where_sent(request)
        answer = analytics_api.as_csv(await analytics_api.deliverability(
            where["domain"], where["provider"], pick(request, "interval", INTERVALS), f["from"], f["to"],
            f["segment"], f["journey"], "csv", table=pick(request, "table", analytics_api.DELIVERABILITY_TABLES),
            m=mesh_of(request)))
        answer.headers["Content-Disposition"] = 'attachment; filename="deliverability.csv"'
        return answer
    return await guarded(request, handler)


# -- A/B experiments -----------------------------------------------------------------------------------


class Experiment(TypedDict):
    template: str
    declared: int                       # the variants its live version declares (messaging's summary)
    report: messaging_api.AbReport | None   # None: messaging did not answer for it (failed, or too slow)


async def _experiments(request: Request) -> list[Experiment]:
    """The templates with variants, each with its A/B report. Messaging names them (ListTemplates
    with_variants): asking every template for a report was ~150 calls, and under load one slow among them
    failed the page. A report that fails or times out is a row without figures, not a failed page."""
    m = mesh_of(request)
    stub = m.stub(messaging_pb2_grpc.MessagingStub, "messaging")
    listed = await stub.ListTemplates(messaging_pb2.ListTemplatesRequest(with_variants=True), timeout=m.timeout)
    gate = asyncio.Semaphore(AB_CONCURRENCY)

    async def one(item: messaging_pb2.TemplateSummary) -> Experiment | None:
        async with gate:
            try:
                report = await messaging_api.ab_report(item.key, m)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:  # removed between the list and the report
                    return None
                log.warning("A/B report of %s unavailable: %s", item.key, exc.code().name)
                return {"template": item.key, "declared": item.variants, "report": None}
        # One variant declared and every send in it: nothing compared yet, so not an experiment.
        if len(report["variants"]) < 2:
            return None
        return {"template": item.key, "declared": item.variants, "report": report}
    rows = await asyncio.gather(*(one(item) for item in listed.items))
    return [r for r in rows if r is not None]


@router.get("/experiments")
async def experiments(request: Request) -> Response:
    """Every template that has variants, with its A/B report: the metric compared, the leader, the
    p-value and whether the difference is significant (messaging's AbReport, as
    /v1/templates/{key}/ab-report answers it); a report messaging did not give in time is marked
    unavailable on its row."""
    async def handler(_request: Request, current: Session) -> Response:
        rows = await _experiments(request)
        return page("experiments.html", session=current, title="A/B experiments", rows=rows)
    return await guarded(request, handler)


@router.get("/experiments/{key}")
async def experiment(request: Request, key: str) -> Response:
    """One template's A/B report: each variant's sends, opens, clicks and rates, as a chart and a table."""
    async def handler(_request: Request, current: Session) -> Response:
        report = await messaging_api.ab_report(key, mesh_of(request))
        chart = {"labels": [v["name"] for v in report["variants"]],
                 "series": [{"label": "open rate %", "values": [round(100 * v["open_rate"], 2)
                                                                 for v in report["variants"]]},
                            {"label": "click rate %", "values": [round(100 * v["click_rate"], 2)
                                                                  for v in report["variants"]]}]}
        return page("experiment.html", session=current, title=f"A/B {key}", report=report,
                    chart_json=json.dumps(chart))
    return await guarded(request, handler)
