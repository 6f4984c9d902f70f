"""With the real clock crm_sync's push loop runs on its own; each pass with work is a trace of its own
(`crm push`), so a contact push (its SQL, scoring's write-back of the CRM id) can be followed. Without it
nothing of a pass was recorded: SQL is traced only inside a recorded span."""

from __future__ import annotations

import asyncio
import json

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nurture import telemetry
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.settings import Settings
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.crm_sync.conftest import TOKEN, Emulator

pytestmark = pytest.mark.anyio


async def test_a_push_pass_is_a_trace_with_its_sql_and_write_back(
        settings: Settings, emulator: Emulator, spans: InMemorySpanExporter) -> None:
    settings = settings.with_overrides(clock="real")
    scoring = await start_service("scoring", settings)
    crm = await start_service("crm_sync", settings.with_overrides(
        crm_url=emulator.url, scoring_addr=scoring.address, journeys_addr=f"127.0.0.1:{free_port()}",
        crm_tokens={"test-crm": TOKEN}))
    channel = mesh_channel(scoring.address)
    try:
        stub = scoring_pb2_grpc.ScoringStub(channel)
        spans.clear()
        reply = await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(
            fields_json=json.dumps({"email": "trace-push@example.com", "first_name": "Tia"})), timeout=5)
        lead_id = reply.lead.id
        for _ in range(200):  # the bus consumer queues the push, the loop performs it, writes the id back
            lead = await stub.GetLead(scoring_pb2.GetLeadRequest(id=lead_id), timeout=5)
            if lead.crm_id:
                break
            await asyncio.sleep(0.05)
        assert lead.crm_id
    finally:
        await channel.close()
        await crm.stop(grace=0.2)
        await scoring.stop(grace=0.2)
    finished = spans.get_finished_spans()
    passes = [s for s in finished if s.name == "crm push"]
    assert passes and all(s.parent is None for s in passes), [s.name for s in finished]
    mine = [s for s in passes if lead_id in str((s.attributes or {}).get(telemetry.LEAD_ID))]
    assert mine, [dict(s.attributes or {}) for s in passes]
    same = [s for s in finished if s.context.trace_id == mine[0].context.trace_id]
    statements = [str(st) for s in same if s.name == "sql transaction" for st in (s.attributes or {})["db.statements"]]
    assert any(st.startswith("UPDATE crm_sync_outbox") for st in statements), statements  # the pass recorded
    # The CRM id written back to scoring, by a pass of its own after the contact push is recorded.
    traces = {s.context.trace_id for s in passes}
    assert any(s.name.endswith("/UpsertLeads") and s.context.trace_id in traces for s in finished)
