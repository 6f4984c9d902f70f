"""A contact another crm_sync replica is handling (its lease in Redis, `nurture:crm_sync:contact:{...}`)
past the wait (10 s): the call answers UNAVAILABLE (the CRM retries) and nothing of it is applied, while
other contacts go on. Taking the lease and waiting for it across two real replicas:
test_inbound_order.py."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis

from nurture.api.crm_sync.v1 import crm_sync_pb2, crm_sync_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2
from nurture.meshauth import Signer
from nurture.rpc import MeshChannel
from tests.conftest import MESH_TOKEN
from tests.integration.crm_sync.conftest import AUTH, Mesh

pytestmark = pytest.mark.anyio


async def test_a_contact_held_by_another_replica_past_the_wait_is_unavailable(mesh: Mesh) -> None:
    client = aioredis.Redis.from_url(mesh.settings.redis_url)
    # A caller that does not retry (the mesh's channels retry UNAVAILABLE), so the test waits once.
    once = MeshChannel(grpc.aio.insecure_channel(mesh.running.address, options=[("grpc.enable_retries", 0)]),
                       Signer(MESH_TOKEN))
    crm = crm_sync_pb2_grpc.CrmSyncStub(once)
    lease = "nurture:crm_sync:contact:{test-crm:id:c-busy}"

    async def upsert(crm_id: str, email: str) -> crm_sync_pb2.UpsertContactsReply:
        reply: crm_sync_pb2.UpsertContactsReply = await crm.UpsertContacts(crm_sync_pb2.UpsertContactsRequest(
            contacts=[crm_sync_pb2.Contact(crm_id=crm_id, email=email, first_name="Ana")]), metadata=AUTH, timeout=60)
        return reply

    try:
        assert await client.set(lease, "other-replica", px=120_000)
        busy = asyncio.ensure_future(upsert("c-busy", "busy@example.com"))
        [free] = (await upsert("c-free", "free@example.com")).results
        assert free.status == "created", free
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await busy
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "another replica" in (caught.value.details() or "")
        assert await client.get(lease) == b"other-replica"   # not taken, not released
        listed = await mesh.scoring.ListLeads(scoring_pb2.ListLeadsRequest(limit=10), timeout=5)
        assert sorted(lead.email for lead in listed.leads) == ["free@example.com"]
    finally:
        await once.close()
        await client.aclose()
