"""The console's routes under /console/: sign-in, journeys, leads, operations, static files.

Every page reads through the same gateway functions that answer the /v1 API (gateway.routes.*), so a
number on a page is the number the API gives for it. A request without a valid session is sent to the
sign-in page; a form without the session's CSRF token, or from a role that may not do it, gets 403.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway import roles
from gateway.console import data, graph, operating, session
from gateway.console.guard import guarded, mesh_of, read_form, redirect, settings_of
from gateway.console.render import page
from gateway.console.static import static_response
from gateway.deps import ApiError
from gateway.routes import analytics as analytics_api
from gateway.routes import journeys as journeys_api
from nurture.api.journeys.v1 import journeys_pb2
from nurture.rpc import LONG_DEADLINE_S

router = APIRouter(prefix="/console", include_in_schema=False)


# -- sign-in -------------------------------------------------------------------------------------------


@router.get("/")
async def home(request: Request) -> Response:
    return redirect("/console/journeys")


def _safe_next(target: str) -> str:
    # Only our own console paths: an open redirect would let a link sign someone in and send them away.
    return target if target.startswith("/console/") and not target.startswith("//") and "\\" not in target \
        else "/console/journeys"


@router.get("/sign-in")
async def sign_in_form(request: Request, next: str = "/console/journeys") -> Response:
    settings = settings_of(request)
    if not settings.session_secret:
        return page("sign_in.html", status=503, session=None, token="", next=_safe_next(next),
                    problem="The console is off: NURTURE_SESSION_SECRET is not set (nurture up generates it).")
    token, new = session.sign_in_token(settings, request)
    response = page("sign_in.html", session=None, token=token, next=_safe_next(next), problem=None)
    if new:
        session.set_sign_in_cookie(settings, response, token)
    return response


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    settings = settings_of(request)
    fields = await read_form(request)
    target = _safe_next(fields.get("next", ""))
    if not settings.session_secret:
        return page("sign_in.html", status=503, session=None, token="", next=target,
                    problem="The console is off: NURTURE_SESSION_SECRET is not set.")
    if not session.sign_in_token_valid(settings, request, fields.get("csrf", "")):
        return page("error.html", status=403, title="Error 403", session=None,
                    message="This sign-in form is stale or did not come from the console: open it again.")
    key = fields.get("api_key", "").strip()
    if not key or roles.role_of(settings, key) is None:
        return page("sign_in.html", status=401, session=None, token=fields.get("csrf", ""), next=target,
                    problem="That is not a valid API key.")
    response = redirect(target)
    session.open_session(settings, response, key)
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    async def handler(_request: Request, _current: session.Session) -> Response:
        response = redirect("/console/sign-in")
        session.close_session(settings_of(request), response)
        return response
    return await guarded(request, handler, form=True)


# -- journeys ------------------------------------------------------------------------------------------


@router.get("/journeys")
async def journeys(request: Request) -> Response:
    async def handler(_request: Request, current: session.Session) -> Response:
        rows = await data.journeys_with_counts(mesh_of(request))
        return page("journeys.html", session=current, title="Journeys", journeys=rows)
    return await guarded(request, handler)


@router.get("/journeys/{key}")
async def journey(request: Request, key: str) -> Response:
    async def handler(_request: Request, current: session.Session) -> Response:
        m = mesh_of(request)
        got = await journeys_api.get_journey(key, 0, m)
        report = await journeys_api.journey_counts(key, m)
        waiting = await data.waiting_by_step(m, key)
        nodes, edges = graph.build(got["definition"] or {}, report, waiting)
        stages = [s for s in (got["definition"] or {}).get("stages") or [] if isinstance(s, dict)]
        f = report_query(request)
        stage_rows = await data.journey_stages(m, key, f["from"], f["to"])
        if stage_rows:
            # The journey's own order (welcome, education, ...), as its graph and stage chips read: the
            # report lists stages by name, which put a funnel's later stages before its first.
            order = {s.get("id"): i for i, s in enumerate(stages)}
            stage_rows.sort(key=lambda r: order.get(r.get("stage"), len(order)))
        return page("journey.html", session=current, title=got["name"] or key, journey=got, report=report,
                    nodes=nodes, edges=edges, stages=stages, layout_json=json.dumps(graph.layout(nodes, edges)),
                    can_publish=roles.allows(current.role, "editor"), stage_rows=stage_rows,
                    span={"from": f["from"] or "", "to": f["to"] or ""},
                    stages_query=urlencode({k: v for k, v in (("from", f["from"]), ("to", f["to"]),
                                                               ("journey", key)) if v}))
    return await guarded(request, handler)


@router.post("/journeys/{key}/publish")
async def publish(request: Request, key: str) -> Response:
    async def handler(_request: Request, current: session.Session) -> Response:
        fields = request.state.form
        try:
            version = int(fields.get("version", "0"))
        except ValueError:
            version = -1
        if not 0 < version < 2**31:
            raise ApiError(422, "invalid", "choose a version to publish")
        reply = await journeys_api._stub(mesh_of(request)).Publish(
            journeys_pb2.PublishRequest(key=key, version=version, migrate=fields.get("migrate") == "on",
                                        dry_run=fields.get("dry_run") == "on"), timeout=LONG_DEADLINE_S)
        return page("published.html", session=current, title=f"Published {key}", key=key,
                    version=reply.version, published=reply.published,
                    report=json.dumps(json.loads(reply.report_json or "{}"), indent=2, sort_keys=True))
    return await guarded(request, handler, needed="editor", form=True)


@router.post("/journeys/{key}/archive")
async def archive(request: Request, key: str) -> Response:
    """Archive the journey, or bring it back (the form's `archived` says which): the API's archive and
    unarchive, then back to the journey's page, which shows its status."""
    async def handler(_request: Request, _current: session.Session) -> Response:
        archived = request.state.form.get("archived", "true") != "false"
        await journeys_api._stub(mesh_of(request)).Archive(
            journeys_pb2.ArchiveRequest(key=key, archived=archived), timeout=LONG_DEADLINE_S)
        return redirect(f"/console/journeys/{quote(key, safe='')}")
    return await guarded(request, handler, needed="editor", form=True)


# -- leads ---------------------------------------------------------------------------------------------


@router.get("/leads")
async def leads(request: Request) -> Response:
    async def handler(_request: Request, current: session.Session) -> Response:
        filters = data.LeadFilters.from_query(request.query_params)
        rows, next_cursor = await data.leads_page(mesh_of(request), filters)
        return page("leads.html", session=current, title="Leads", leads=rows, filters=filters,
                    next_cursor=next_cursor, journeys=await data.journey_keys(mesh_of(request)))
    return await guarded(request, handler)


@router.get("/leads/{lead_id}")
async def lead(request: Request, lead_id: str) -> Response:
    async def handler(_request: Request, current: session.Session) -> Response:
        m = mesh_of(request)
        view = await data.lead_view(m, lead_id)
        chosen = request.query_params.get("why_not", "")
        explained = await data.why_not(m, lead_id, chosen) if chosen else None
        return page("lead.html", session=current, title=view["lead"]["email"] or lead_id, why_not=explained,
                    chosen=chosen, journeys_all=await data.journey_keys(m), **view)
    return await guarded(request, handler)


# -- analytics -----------------------------------------------------------------------------------------

GROUPS = ("journey", "segment", "template", "channel", "topic", "format")
METRICS = ("sent", "opened", "clicked", "mql", "sql", "trials", "customers", "revenue")


def report_query(request: Request) -> dict[str, str | None]:
    """The filters every report takes, as the page's form sends them (empty means "not set")."""
    q = request.query_params
    return {name: (q.get(name) or None) for name in ("from", "to", "segment", "journey")}


def pick(request: Request, name: str, allowed: tuple[str, ...]) -> str:
    """A page's choice parameter (the first allowed when absent), checked as the API checks it."""
    return analytics_api.choice(request.query_params.get(name) or allowed[0], allowed, name)


def with_empty_periods(points: list[dict[str, object]], interval: str) -> list[dict[str, object]]:
    """The series with a 0 for every day (or week) between its first and last point that has none: the API
    leaves out a period with nothing in it, and a chart of its points alone drew the days either side of
    an empty one as neighbours, hiding the gap from the person reading it."""
    step = timedelta(days=7 if interval == "week" else 1)
    try:
        known = {date.fromisoformat(str(p["t"])): p for p in points}
    except ValueError:  # not dates: shown as they came
        return points
    if not known:
        return points
    day, last, filled = min(known), max(known), []
    while day <= last:
        filled.append(known.get(day) or {"t": day.isoformat(), "value": 0})
        day += step
    return filled


@router.get("/analytics")
async def analytics(request: Request) -> Response:
    """The dashboard: engagement by a chosen dimension, one metric over time (chart and table) and the
    stages' conversion and velocity, each from the same call as its /v1/analytics report."""
    async def handler(_request: Request, current: session.Session) -> Response:
        m, f = mesh_of(request), report_query(request)
        group_by, metric = pick(request, "group_by", GROUPS), pick(request, "metric", METRICS)
        interval = pick(request, "interval", ("day", "week"))
        args = (f["from"], f["to"], f["segment"], f["journey"], "json")
        engagement = analytics_api.as_json(await analytics_api.engagement(group_by, *args, m=m))
        series = analytics_api.as_json(await analytics_api.timeseries(metric, interval, *args, m=m))
        points = with_empty_periods(series["points"], interval)
        progression = await analytics_api.progression_tables(*args[:4], ("stages", "qualification"), m=m)
        filters = {k: v or "" for k, v in f.items()}
        query = urlencode({k: v for k, v in filters.items() if v})
        return page("analytics.html", session=current, title="Analytics", filters=filters, groups=GROUPS,
                    metrics=METRICS, group_by=group_by, metric=metric, interval=interval,
                    engagement=engagement["rows"], points=points, stages=progression["stages"],
                    qualification=progression["qualification"], series_json=json.dumps(points),
                    query=query)
    return await guarded(request, handler)


@router.get("/analytics/{report}.csv")
async def analytics_csv(request: Request, report: str) -> Response:
    """A dashboard table as CSV: the same rows `/v1/analytics/...?format=csv` answers."""
    async def handler(_request: Request, _current: session.Session) -> Response:
        m, f = mesh_of(request), report_query(request)
        args = (f["from"], f["to"], f["segment"], f["journey"], "csv")
        if report == "engagement":
            answer = await analytics_api.engagement(pick(request, "group_by", GROUPS), *args, m=m)
        elif report == "timeseries":
            answer = await analytics_api.timeseries(pick(request, "metric", METRICS),
                                                    pick(request, "interval", ("day", "week")), *args, m=m)
        elif report == "stages":
            answer = await analytics_api.progression(*args, table="stages", m=m)
        else:
            raise ApiError(404, "not_found", f"no report {report!r}: engagement, timeseries or stages")
        response = analytics_api.as_csv(answer)
        response.headers["Content-Disposition"] = f'attachment; filename="{report}.csv"'
        return response
    return await guarded(request, handler)


# -- operations ----------------------------------------------------------------------------------------


@router.get("/operations")
async def operations(request: Request) -> Response:
    async def handler(_request: Request, current: session.Session) -> Response:
        view = await data.operations_view(mesh_of(request))
        queues = await operating.queues_view(mesh_of(request), current)
        return page("operations.html", session=current, title="Operations", queues=queues,
                    highlight=request.query_params.get("audit", ""), **view)
    return await guarded(request, handler)


# -- static files --------------------------------------------------------------------------------------


@router.get("/static/{name}")
async def static(name: str) -> Response:
    return static_response(name)

