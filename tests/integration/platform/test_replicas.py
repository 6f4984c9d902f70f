"""Replicas behind one address: a client channel on a comma list of two real scoring servers spreads its
calls over both (each server span names the replica that answered, `service.instance`), and keeps
answering when one of them stops."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.settings import Settings
from tests.conftest import mesh_channel, start_service

pytestmark = pytest.mark.anyio

CALLS = 30


def _answered_by(spans: InMemorySpanExporter) -> Counter[str]:
    """How many GetLeads calls each replica served, read from the server spans."""
    return Counter(str(s.attributes["service.instance"]) for s in spans.get_finished_spans()
                   if s.attributes and str(s.attributes.get("rpc.method", "")).endswith("/GetLeads"))


async def test_one_channel_spreads_calls_over_replicas_and_skips_a_stopped_one(
        settings: Settings, spans: InMemorySpanExporter) -> None:
    first = await start_service("scoring", settings.with_overrides(replica="a"))
    second = await start_service("scoring", settings.with_overrides(replica="b"))
    stopped = False
    ch = mesh_channel(f"{first.address},{second.address}")
    try:
        stub = scoring_pb2_grpc.ScoringStub(ch)
        reply = await stub.UpsertLeads(scoring_pb2.UpsertLeadsRequest(leads=[scoring_pb2.UpsertLeadRequest(
            id="rita", fields_json=json.dumps({"email": "rita@example.com"}))]), timeout=10)
        assert [r.error_code for r in reply.results] == [""]
        spans.clear()
        for _ in range(CALLS):
            got = await stub.GetLeads(scoring_pb2.GetLeadsRequest(ids=["rita"]), timeout=5)
            assert [lead.id for lead in got.leads] == ["rita"]  # either replica reads the shared database
        served = _answered_by(spans)
        assert set(served) == {first.address, second.address}, served
        assert sum(served.values()) == CALLS
        assert min(served.values()) >= CALLS // 4, served  # round robin, not one replica and a stray call

        await second.stop(grace=0.5)
        stopped = True
        spans.clear()
        for _ in range(CALLS):  # no call fails: the balancer leaves the stopped replica out (or retries)
            got = await stub.GetLeads(scoring_pb2.GetLeadsRequest(ids=["rita"]), timeout=5)
            assert [lead.id for lead in got.leads] == ["rita"]
        assert _answered_by(spans) == Counter({first.address: CALLS})
    finally:
        await ch.close()
        await first.stop(grace=0.5)
        if not stopped:
            await second.stop(grace=0.5)
