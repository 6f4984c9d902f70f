"""Scoring checks every gRPC request against nurture.limits itself (a service never trusts its
caller): INVALID_ARGUMENT with a short message, nothing stored; in a batch the bad item fails alone."""

from __future__ import annotations

import json

import grpc
import pytest

from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.service import Running
from tests.conftest import mesh_channel

pytestmark = pytest.mark.anyio
DEEP = "[" * 300 + "]" * 300


async def invalid(call) -> dict:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    body = json.loads(err.value.details())
    assert body["code"] == "invalid" and body["details"]["fields"], body
    return body


async def test_upsert_and_reads_refuse_what_breaks_a_limit(scoring: Running) -> None:
    async with mesh_channel(scoring.address) as ch:
        stub = scoring_pb2_grpc.ScoringStub(ch)
        for fields in ('{"first_name": "\\ud800"}', '{"attributes": {"x": ' + DEEP + "}}",
                       '{"attributes": {"x": "a\\u0000b"}}', '{"attributes": {"n": 9007199254740993}}',
                       "[" * 5000 + "]" * 5000, '{"attributes": {"x": NaN}}'):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(id="x", fields_json=fields), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (fields[:40], err.value)
        await invalid(stub.GetLead(scoring_pb2.GetLeadRequest(id="a\x00b"), timeout=5))
        await invalid(stub.ListLeads(scoring_pb2.ListLeadsRequest(email="a\x00@b.c"), timeout=5))
        await invalid(common_pb2_grpc.AdminStub(ch).Timeline(common_pb2.TimelineRequest(lead_id="\x00"), timeout=5))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetLead(scoring_pb2.GetLeadRequest(id="x"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_ingest_takes_the_good_events_and_refuses_the_bad_alone(scoring: Running) -> None:
    async with mesh_channel(scoring.address) as ch:
        stub = scoring_pb2_grpc.ScoringStub(ch)
        await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(id="ok", fields_json="{}"), timeout=5)
        year_one = scoring_pb2.Event(lead_id="ok", type="page_viewed")
        year_one.occurred_at.seconds = -62135596800  # 0001-01-01T00:00:00Z
        events = [
            scoring_pb2.Event(lead_id="ok", type="page_viewed", properties_json='{"page": "/a"}'),
            scoring_pb2.Event(lead_id="ok", type="page_viewed", properties_json='{"page": "\\udc00"}'),
            scoring_pb2.Event(lead_id="ok", type="page_viewed", properties_json='{"x": ' + DEEP + "}"),
            year_one,
            scoring_pb2.Event(lead_id="ok", type="page_viewed", idempotency_key="k\x00"),
            scoring_pb2.Event(lead_id="ok", type="page_viewed", properties_json='{"page": "/b"}'),
        ]
        reply = await stub.IngestEvents(scoring_pb2.IngestRequest(events=events), timeout=5)
        assert [r.error_code for r in reply.results] == ["", "invalid", "invalid", "invalid", "invalid", ""]
        assert all(len(r.error_message) < 300 for r in reply.results)
        timeline = await common_pb2_grpc.AdminStub(ch).Timeline(common_pb2.TimelineRequest(lead_id="ok"), timeout=5)
        pages = [json.loads(i.details_json)["properties"].get("page") for i in timeline.items
                 if i.type == "page_viewed"]
        assert pages == ["/a", "/b"]
        upserts = await stub.UpsertLeads(scoring_pb2.UpsertLeadsRequest(leads=[
            scoring_pb2.UpsertLeadRequest(id="u-1", fields_json='{"first_name": "Ana"}'),
            scoring_pb2.UpsertLeadRequest(id="u-2", fields_json='{"first_name": "\\ud800"}'),
            scoring_pb2.UpsertLeadRequest(id="u\x00", fields_json="{}"),
        ]), timeout=5)
        assert [r.error_code for r in upserts.results] == ["", "invalid", "invalid"]


async def test_a_locale_as_long_as_the_limit_is_stored_and_read(scoring: Running) -> None:
    # The profile's limit is BCP 47's 35 characters, but its column held 16: on PostgreSQL a longer tag
    # (a script, a region and a private use) failed the write, a 500 on POST /v1/leads.
    locale = "zh-Hant-TW-x-borderbridge-" + "a" * 9
    assert len(locale) == 35
    async with mesh_channel(scoring.address) as ch:
        stub = scoring_pb2_grpc.ScoringStub(ch)
        await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(
            id="tw", fields_json=json.dumps({"email": "tw@example.com", "locale": locale})), timeout=5)
        lead = await stub.GetLead(scoring_pb2.GetLeadRequest(id="tw"), timeout=5)
        assert lead.locale == locale
