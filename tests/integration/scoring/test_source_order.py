"""An upsert that copies a source record (a CRM contact) carries the source's modification time, and
scoring, under the lead's row lock, refuses one older than the last it applied of the same record:
the one meeting point of deliveries that crm_sync replicas take at once (tests/integration/crm_sync/
test_inbound_order.py drives that through two replicas on PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.service import Running
from tests.conftest import mesh_channel

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
async def stub(scoring: Running) -> AsyncIterator[scoring_pb2_grpc.ScoringStub]:
    channel = mesh_channel(scoring.address)
    yield scoring_pb2_grpc.ScoringStub(channel)
    await channel.close()


def crm_write(name: str, minutes: int, record: str = "hub:7", lead_id: str = "src-1") -> scoring_pb2.UpsertLeadRequest:
    r = scoring_pb2.UpsertLeadRequest(id=lead_id, fields_json=json.dumps({"first_name": name}), merge=True,
                                      source="crm:hub", source_record=record)
    r.source_modified_at.FromDatetime(T0 + timedelta(minutes=minutes))
    return r


async def one(stub: scoring_pb2_grpc.ScoringStub, r: scoring_pb2.UpsertLeadRequest) -> scoring_pb2.UpsertLeadResult:
    reply = await stub.UpsertLeads(scoring_pb2.UpsertLeadsRequest(leads=[r]), timeout=10)
    [result] = reply.results
    return result


async def test_an_older_modification_of_the_same_record_is_stale_and_changes_nothing(
    stub: scoring_pb2_grpc.ScoringStub,
) -> None:
    created = await one(stub, crm_write("Ana", 10))
    assert created.created and not created.stale
    older = await one(stub, crm_write("Old", 5))
    assert older.stale and not older.error_code
    assert (older.lead.first_name, older.lead.version) == ("Ana", created.lead.version)
    # The same instant again is not older (crm_sync tells a repeat from a same-time edit itself).
    same = await one(stub, crm_write("Anna", 10))
    assert not same.stale and same.lead.first_name == "Anna"
    # A later modification that changes nothing here still moves the mark: what comes older after it is stale.
    touched = await one(stub, crm_write("Anna", 20))
    assert not touched.stale and touched.lead.version == same.lead.version
    assert (await one(stub, crm_write("Between", 15))).stale
    # UpsertLead answers the same way.
    single = await stub.UpsertLead(crm_write("Between", 15), timeout=10)
    assert single.stale and single.lead.first_name == "Anna"
    # Another record (the CRM merged contacts) is not compared with this one's times; nor is a write
    # without a source time (the API's).
    other = await one(stub, crm_write("Merged", 1, record="hub:8"))
    assert not other.stale and other.lead.first_name == "Merged"
    api = await one(stub, scoring_pb2.UpsertLeadRequest(id="src-1", fields_json=json.dumps({"first_name": "Api"}),
                                                        merge=True))
    assert not api.stale and api.lead.first_name == "Api"
    # ... and the mark stays: the merged record's older write is still stale.
    assert (await one(stub, crm_write("Late", 0, record="hub:8"))).stale
    lead = await stub.GetLead(scoring_pb2.GetLeadRequest(id="src-1"), timeout=10)
    assert lead.first_name == "Api"


async def test_a_source_record_longer_than_its_column_is_refused(stub: scoring_pb2_grpc.ScoringStub) -> None:
    bad = await one(stub, crm_write("Ana", 1, record="x" * 301, lead_id="src-2"))
    assert bad.error_code == "invalid" and "source_record" in bad.error_message
    assert not bad.HasField("lead")
    ok = await one(stub, crm_write("Ana", 1, record="x" * 300, lead_id="src-2"))
    assert ok.created
