"""LeadsJourneys answers for many leads what LeadJourneys answers for one, in one call; crm_sync's
lookup uses it, and falls back to a call per lead against a journeys that predates it."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nurture.api.journeys.v1 import journeys_pb2, journeys_pb2_grpc
from nurture.rpc import ServiceServer, start_server
from services.crm_sync.clients import JourneysLookup
from tests.conftest import MESH_TOKEN, free_port, mesh_channel
from tests.integration.journeys.conftest import Mesh
from tests.integration.journeys.fakes import lead, publish, settle

pytestmark = pytest.mark.anyio


async def test_many_leads_are_answered_as_each_alone_in_the_order_asked(mesh: Mesh) -> None:
    for lead_id, segment in (("m-1", "skilled_professional"), ("m-2", "family")):
        await publish(mesh.pub, mesh.clock, lead(lead_id, segment), "lead_created")
    await settle(mesh.admin)
    asked = ["m-2", "nobody", "m-1", "m-2"]
    reply = await mesh.stub.LeadsJourneys(journeys_pb2.LeadsJourneysRequest(lead_ids=asked), timeout=5)
    assert [entry.lead_id for entry in reply.leads] == asked
    for entry in reply.leads:
        alone = await mesh.stub.LeadJourneys(journeys_pb2.LeadJourneysRequest(lead_id=entry.lead_id), timeout=5)
        assert list(entry.enrollments) == list(alone.enrollments)
    assert {e.journey for e in reply.leads[0].enrollments} >= {"family"}
    assert list(reply.leads[1].enrollments) == []


@pytest.mark.parametrize(("ids", "field"), [(["m-1", ""], "lead_ids"), ([f"m-{n}" for n in range(1001)], "lead_ids"),
                                            (["bad\x00id"], "lead_ids[0]")])
async def test_a_bad_request_is_refused_whole(mesh: Mesh, ids: list[str], field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.stub.LeadsJourneys(journeys_pb2.LeadsJourneysRequest(lead_ids=ids), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")


async def test_crm_syncs_lookup_asks_once_for_a_batch(mesh: Mesh, spans: InMemorySpanExporter) -> None:
    await publish(mesh.pub, mesh.clock, lead("m-3", "family"), "lead_created")
    await settle(mesh.admin)
    channel = mesh_channel(mesh.running.address)
    spans.clear()
    try:
        found = await JourneysLookup(channel).many(["m-3", "", "nobody"])
    finally:
        await channel.close()
    calls = [s.name for s in spans.get_finished_spans() if s.name.startswith("/nurture.api.journeys.v1.Journeys/")]
    assert calls == ["/nurture.api.journeys.v1.Journeys/LeadsJourneys"]
    assert set(found) == {"m-3", "nobody"} and found["nobody"] == []
    assert {"journey": "family", "status": "active", "stage": found["m-3"][0]["stage"]} in found["m-3"]


class _OlderJourneys(journeys_pb2_grpc.JourneysServicer):
    """A journeys from before LeadsJourneys (a rolling upgrade): only the per-lead call."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def LeadJourneys(self, request: Any, context: Any) -> Any:
        self.asked.append(request.lead_id)
        return journeys_pb2.LeadJourneysReply(enrollments=[journeys_pb2.Enrollment(
            journey="family", status="active", stage="awareness")])


async def test_crm_syncs_lookup_falls_back_to_a_call_per_lead_on_an_older_journeys() -> None:
    older = _OlderJourneys()
    def register(server: grpc.aio.Server) -> list[str]:
        journeys_pb2_grpc.add_JourneysServicer_to_server(older, server)
        return ["nurture.api.journeys.v1.Journeys"]

    server: ServiceServer = await start_server(name="older-journeys", port=free_port(), register=register,
                                               mesh_tokens=[MESH_TOKEN])
    channel = mesh_channel(f"127.0.0.1:{server.port}")
    try:
        lookup = JourneysLookup(channel)
        for _ in range(2):
            found = await lookup.many(["o-1", "o-2"])
            assert found == {lead_id: [{"journey": "family", "status": "active", "stage": "awareness"}]
                             for lead_id in ("o-1", "o-2")}
    finally:
        await channel.close()
        await server.stop(0)
    assert sorted(older.asked) == ["o-1", "o-1", "o-2", "o-2"]
