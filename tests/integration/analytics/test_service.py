"""The analytics service over the real bus and the gateway: a history published to Redis Streams,
heard across a restart and heard again in full, reads the same as a brute-force recount through every
HTTP report; CSV carries the same rows; bad queries answer 422 in the API's error shape."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as aioredis

from gateway.app import create_app
from gateway.routes.analytics import ATTRIBUTION_TABLES, PROGRESSION_TABLES, ROI_TABLES
from nurture.api.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.bus import Publisher
from nurture.busmessage import BusMessage
from nurture.service import Running
from nurture.settings import SERVICES, Settings
from services.analytics.app.core import load_costs
from services.analytics.domain import reports
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.analytics import history as h

pytestmark = pytest.mark.anyio


async def settle(service: Running) -> None:
    async with mesh_channel(service.address) as ch:
        await common_pb2_grpc.AdminStub(ch).Settle(common_pb2.SettleRequest(), timeout=60)


@pytest.fixture
async def heard(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, list[dict[str, Any]]]]:
    stream = h.generate(7, leads=30)
    client = aioredis.Redis.from_url(settings.redis_url)
    publisher = Publisher(client, settings.bus_shards)
    half = len(stream) // 2
    first = await start_service("analytics", settings)
    await publisher.publish([BusMessage.from_dict(m) for m in stream[:half]])
    await settle(first)
    await first.stop(grace=0.2)  # a restart between the halves
    service = await start_service("analytics", settings)
    await publisher.publish([BusMessage.from_dict(m) for m in stream[half:]])
    # Everything again: a republished outbox, a reset consumer.
    await publisher.publish([BusMessage.from_dict(m) for m in stream])
    await settle(service)
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    addrs["analytics_addr"] = service.address
    app = create_app(settings.with_overrides(api_key="test-key", **addrs))
    for s in SERVICES:
        app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw",
                                 headers={"Authorization": "Bearer test-key"}) as http:
        yield http, stream
    await service.stop(grace=0.2)
    await client.aclose()


def _params(r: h.Range) -> dict[str, str]:
    p = {"from": f"{r.start.isoformat()}T00:00:00Z", "to": f"{r.end.isoformat()}T23:59:59Z"}
    if r.segment is not None:
        p["segment"] = r.segment
    if r.journey is not None:
        p["journey"] = r.journey
    return p


async def test_every_http_report_equals_the_recount(heard: tuple[httpx.AsyncClient, list[dict[str, Any]]]) -> None:
    http, stream = heard
    days = sorted({h.at_of(m).date() for m in stream})
    for r in (h.Range(days[0], days[-1]), h.Range(days[0], days[-1], segment="family", journey="welcome")):
        p = _params(r)
        for group in reports.ENGAGEMENT_GROUPS:
            got = await http.get("/v1/analytics/engagement", params={**p, "group_by": group})
            assert got.status_code == 200, got.text
            assert got.json()["rows"] == h.engagement(stream, r, group)
        got = (await http.get("/v1/analytics/progression", params=p)).json()
        expected = h.progression(stream, r)
        assert [{k: v for k, v in s.items() if k not in ("bottleneck", "why")} for s in got["stages"]] \
            == expected["stages"]
        assert got["lifecycle"] == expected["lifecycle"] and got["qualification"] == expected["qualification"]
        assert got["time_to_conversion"] == expected["time_to_conversion"]
        assert got["content_gaps"] == expected["content_gaps"]
        assert got["score_progression"] == expected["score_progression"]
        for metric in reports.TIMESERIES_METRICS:
            got = (await http.get("/v1/analytics/timeseries", params={**p, "metric": metric,
                                                                       "interval": "week"})).json()
            assert got["points"] == h.timeseries(stream, r, metric, "week")
        for model in reports.ATTRIBUTION_MODELS:
            got = (await http.get("/v1/analytics/attribution", params={**p, "model": model,
                                                                        "window_days": "14"})).json()
            assert got == h.attribution(stream, r, model, 14)
        for length, unit in ((2, "template"), (3, "topic")):
            got = (await http.get("/v1/analytics/sequences", params={**p, "length": str(length), "by": unit,
                                                                      "window_days": "14"})).json()
            assert got == h.sequences(stream, r, length, unit, 14)
        inputs = h.roi_inputs(stream, r)
        expected_roi = reports.roi_report(nurtured=inputs["nurtured"], sent_by_channel=inputs["sent_by_channel"],
                                         costs=load_costs(), start=r.start, end=r.end,
                                         influenced=inputs["influenced"], by_journey=inputs["by_journey"])
        got_roi = (await http.get("/v1/analytics/roi", params=p)).json()
        assert got_roi.pop("by_path") == h.value_by_path(stream, r)
        assert got_roi == expected_roi
    assert h.engagement(stream, h.Range(days[0], days[-1]), "journey")  # the history reached the reports


async def test_a_plain_date_is_that_day_in_utc_and_a_to_date_includes_its_day(
        heard: tuple[httpx.AsyncClient, list[dict[str, Any]]]) -> None:
    """`from=2026-01-01` was a 422 (RFC 3339 with a zone only): a date reads as its day in UTC, from its
    start, and `to` through its end, so the dates of a range give what its full times give."""
    http, stream = heard
    days = sorted({h.at_of(m).date() for m in stream})
    dated = {"from": days[0].isoformat(), "to": days[-1].isoformat()}
    timed = {"from": f"{days[0].isoformat()}T00:00:00Z", "to": f"{days[-1].isoformat()}T23:59:59.999999Z"}
    for path, extra in (("/v1/analytics/engagement", {"group_by": "template"}), ("/v1/analytics/roi", {}),
                        ("/v1/analytics/timeseries", {"metric": "sent"}), ("/v1/analytics/deliverability", {})):
        by_date = await http.get(path, params={**dated, **extra})
        assert by_date.status_code == 200, by_date.text
        assert by_date.json() == (await http.get(path, params={**timed, **extra})).json(), path
    # One day, given as a date both ends, is that whole day.
    one = {"from": days[-1].isoformat(), "to": days[-1].isoformat(), "metric": "sent"}
    points = (await http.get("/v1/analytics/timeseries", params=one)).json()["points"]
    assert [p["t"] for p in points] == [days[-1].isoformat()], points


async def test_csv_carries_the_json_rows(heard: tuple[httpx.AsyncClient, list[dict[str, Any]]]) -> None:
    http, _ = heard
    span = {"group_by": "template", "from": "2026-01-01T00:00:00Z", "to": "2026-06-01T00:00:00Z"}
    as_json = (await http.get("/v1/analytics/engagement", params=span)).json()["rows"]
    got = await http.get("/v1/analytics/engagement", params={**span, "format": "csv"})
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(got.text)))
    assert len(rows) == len(as_json) > 0
    assert rows[0] == {k: "" if v is None else str(v) for k, v in as_json[0].items()}
    span = {"from": "2026-01-01T00:00:00Z", "to": "2026-06-01T00:00:00Z"}
    nurture = (await http.get("/v1/analytics/progression", params=span)).json()["time_to_conversion"]
    got = await http.get("/v1/analytics/progression", params={**span, "format": "csv", "table": "time_to_conversion"})
    assert got.status_code == 200 and nurture[0]["journey"] is None and nurture[0]["conversions"] > 0
    assert list(csv.DictReader(io.StringIO(got.text))) == [
        {k: "" if v is None else str(v) for k, v in row.items()} for row in nurture]
    sequences = (await http.get("/v1/analytics/sequences", params=span)).json()["rows"]
    got = await http.get("/v1/analytics/sequences", params={**span, "format": "csv"})
    assert got.status_code == 200 and sequences
    assert list(csv.DictReader(io.StringIO(got.text))) == [
        {k: "" if v is None else str(v) for k, v in row.items()} for row in sequences]
    rates = (await http.get("/v1/analytics/sequences", params=span)).json()["rates"]
    got = await http.get("/v1/analytics/sequences", params={**span, "format": "csv", "table": "rates"})
    assert got.status_code == 200 and any(row["converted"] for row in rates)
    assert list(csv.DictReader(io.StringIO(got.text))) == [
        {k: "" if v is None else str(v) for k, v in row.items()} for row in rates]
    # Each progression table's CSV (only that table computed) carries the full report's rows.
    full = (await http.get("/v1/analytics/progression", params={**span, "segments": "true"})).json()
    assert (await http.get("/v1/analytics/progression", params=span)).json() == full | {"segments": []}
    for table in reports.PROGRESSION_TABLES:
        got = await http.get("/v1/analytics/progression", params={**span, "format": "csv", "table": table})
        assert got.status_code == 200, got.text
        assert list(csv.DictReader(io.StringIO(got.text))) == [
            {k: "" if v is None else str(v) for k, v in row.items()} for row in full[table]], table
    assert any(full[t] for t in reports.PROGRESSION_TABLES if t != "time_to_conversion")


CSV_TABLES = [("/v1/analytics/engagement", "rows", {}), ("/v1/analytics/timeseries", "points", {})] + [
    ("/v1/analytics/progression", t, {"table": t}) for t in PROGRESSION_TABLES] + [
    ("/v1/analytics/attribution", t, {"table": t}) for t in ATTRIBUTION_TABLES] + [
    ("/v1/analytics/roi", t, {"table": t}) for t in ROI_TABLES] + [
    ("/v1/analytics/sequences", t, {"table": t}) for t in ("rows", "rates")]


async def test_a_csv_table_without_rows_is_its_header(heard: tuple[httpx.AsyncClient, list[dict[str, Any]]]) -> None:
    """A range with nothing in it answered an empty body: no header for a spreadsheet or a script to read
    columns by. Each table's header is the keys of its JSON rows where the history has some."""
    http, _ = heard
    full = {"from": "2026-01-01T00:00:00Z", "to": "2026-06-01T00:00:00Z", "model": "linear"}
    empty = {"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"}
    checked = checked_empty = 0
    for path, table, params in CSV_TABLES:
        got = await http.get(path, params={**empty, **params, "format": "csv"})
        assert got.status_code == 200, (path, table, got.text)
        header = got.text.split("\r\n")
        if not (await http.get(path, params={**empty, **params})).json()[table]:
            assert header[1:] == [""] and header[0], (path, table, got.text)
            checked_empty += 1
        rows = (await http.get(path, params={**full, **params})).json()[table]
        if rows:
            assert header[0].split(",") == list(rows[0]), (path, table)
            checked += 1
    assert checked >= 8 and checked_empty >= 10   # the history behind `heard` fills most tables


@pytest.mark.parametrize(("path", "params", "field"), [
    ("/v1/analytics/engagement", {"group_by": "colour"}, "group_by"),
    ("/v1/analytics/engagement", {"format": "xml"}, "format"),
    ("/v1/analytics/engagement", {"from": "yesterday"}, "from"),
    ("/v1/analytics/engagement", {"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "from"),
    ("/v1/analytics/attribution", {"model": "middle"}, "model"),
    ("/v1/analytics/attribution", {"window_days": "0"}, "window_days"),
    ("/v1/analytics/timeseries", {"metric": "mood"}, "metric"),
    ("/v1/analytics/timeseries", {"interval": "hour"}, "interval"),
    ("/v1/analytics/progression", {"format": "csv", "table": "steps"}, "table"),
    ("/v1/analytics/sequences", {"length": "4"}, "length"),
    ("/v1/analytics/sequences", {"by": "colour"}, "by"),
    ("/v1/analytics/sequences", {"window_days": "4000"}, "window_days"),
    ("/v1/analytics/sequences", {"format": "csv", "table": "steps"}, "table"),
    ("/v1/analytics/engagement", {"from": "2026-02-30"}, "from"),
    ("/v1/analytics/roi", {"to": "2026-1-5"}, "to"),
    ("/v1/analytics/roi", {"from": "2026-03-02", "to": "2026-03-01"}, "from"),
    ("/v1/analytics/deliverability", {"interval": "hour"}, "interval"),
    ("/v1/analytics/deliverability", {"format": "csv", "table": "by_colour"}, "table"),
    ("/v1/analytics/deliverability", {"format": "pdf"}, "format"),
    ("/v1/analytics/deliverability", {"to": "2026-13-01T00:00:00Z"}, "to"),
    ("/v1/analytics/deliverability", {"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "from"),
])
async def test_a_bad_query_is_a_422_in_the_error_shape(heard: tuple[httpx.AsyncClient, list[dict[str, Any]]],
                                                       path: str, params: dict[str, str], field: str) -> None:
    http, _ = heard
    got = await http.get(path, params=params)
    assert got.status_code == 422, got.text
    error = got.json()["error"]
    assert error["code"] == "invalid" and field in error["message"]
    # The details name the parameter in `fields`, as every other 422 of the API does, whichever part
    # refused it (the gateway's own checks of format, choices and window_days named it in `field` only).
    details = error["details"]
    assert field in details.get("fields", {}), details


async def test_progression_refuses_a_table_it_does_not_have(settings: Settings) -> None:
    service = await start_service("analytics", settings)
    try:
        async with mesh_channel(service.address) as ch:
            stub = analytics_pb2_grpc.AnalyticsStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Progression(analytics_pb2.ProgressionRequest(tables=["stages", "steps"]), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "tables" in str(refused.value.details())
            got = json.loads((await stub.Progression(analytics_pb2.ProgressionRequest(tables=["qualification"]),
                                                     timeout=10)).report_json)
            assert set(got) == set(reports.PROGRESSION_TABLES) and got["stages"] == []
    finally:
        await service.stop(grace=0.2)


async def test_a_rejected_mql_counts_as_recycled_and_again_as_an_mql_when_it_requalifies(settings: Settings) -> None:
    """Seed 004's closed loop: scoring recycles an MQL sales turn down (mql -> recycled) and a recycled lead
    that re-qualifies is an MQL again (recycled -> mql). The weekly qualification table counted neither
    rejection: stages only moved forward, and it had no column for it."""
    def change(n: int, old: str, new: str, hours: int) -> BusMessage:
        at = h._iso(h.T0 + timedelta(hours=hours))
        return BusMessage.from_dict({
            "id": f"ev-rq-{n}:stage", "lead_id": "rq", "type": "stage_changed", "properties": {"old": old, "new": new},
            "occurred_at": at, "lead": {"id": "rq", "lifecycle_stage": new, "score": 50, "created_at": h._iso(h.T0)},
            "score_delta": 0, "rules": [], "signals": []})

    created = BusMessage.from_dict({
        "id": "ev-rq-0", "lead_id": "rq", "type": "lead_created", "properties": {}, "occurred_at": h._iso(h.T0),
        "lead": {"id": "rq", "lifecycle_stage": "subscriber", "score": 0, "created_at": h._iso(h.T0)},
        "score_delta": 0, "rules": [], "signals": []})
    service = await start_service("analytics", settings)
    try:
        publisher = Publisher(aioredis.Redis.from_url(settings.redis_url), settings.bus_shards)
        await publisher.publish([created, change(1, "subscriber", "mql", 1), change(2, "mql", "recycled", 2),
                                 change(3, "recycled", "mql", 30)])
        await settle(service)
        query = analytics_pb2.ReportQuery()
        getattr(query, "from").FromDatetime(h.T0 - timedelta(days=1))
        query.to.FromDatetime(h.T0 + timedelta(days=7))
        async with mesh_channel(service.address) as ch:
            got = json.loads((await analytics_pb2_grpc.AnalyticsStub(ch).Progression(analytics_pb2.ProgressionRequest(
                query=query, tables=["lifecycle", "qualification"]), timeout=10)).report_json)
        assert {(r["from"], r["to"]): r["count"] for r in got["lifecycle"]} == {
            ("subscriber", "mql"): 1, ("mql", "recycled"): 1, ("recycled", "mql"): 1}
        assert got["qualification"] == [{"week": "2026-03-02", "mql": 2, "sql": 0, "trial": 0, "customer": 0,
                                         "recycled": 1}]
    finally:
        await service.stop(grace=0.2)
