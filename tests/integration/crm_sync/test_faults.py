"""Outbound faults: the CRM down for an hour and back, rate limits with Retry-After, 5xx, a request the
CRM rejects for good (dead letter with the reason), and a scoring service that is not there."""

from __future__ import annotations

import json

import grpc
import pytest

from nurture.api.common.v1 import common_pb2
from nurture.api.crm_sync.v1 import crm_sync_pb2
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.crm_sync.conftest import AUTH, Mesh

pytestmark = pytest.mark.anyio


async def new_contact(mesh: Mesh, n: int) -> str:
    c = crm_sync_pb2.Contact(crm_id=f"f{n}", email=f"f{n}@example.com", first_name=f"F{n}")
    c.modified_at.FromDatetime(mesh.clock.now())
    reply = await mesh.crm.UpsertContacts(crm_sync_pb2.UpsertContactsRequest(contacts=[c]), metadata=AUTH, timeout=5)
    return reply.results[0].lead_id


def contacts_by_email(mesh: Mesh) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in mesh.emulator.get("/crm/v3/objects/contacts?limit=1000")["results"]:
        out.setdefault(c["properties"].get("email", ""), []).append(c["id"])
    return out


async def test_crm_down_for_an_hour_loses_nothing(mesh: Mesh) -> None:
    mesh.emulator.stop()
    leads = [await new_contact(mesh, n) for n in range(5)]
    req = crm_sync_pb2.TaskRequest(dedupe_key="down:1", lead_id=leads[0], kind="sales_alert", title="Call now",
                                   priority="high")
    await mesh.sales.RequestTask(req, timeout=5)
    await mesh.advance(3600)  # an hour of retries against a CRM that is not there
    pending = [i for i in await mesh.timeline(leads[0]) if i.type == "push_retry"]
    assert len(pending) >= 5 and not [i for i in await mesh.timeline(leads[0]) if i.type == "push_dead"]
    mesh.emulator.start()
    await mesh.advance(2200)  # the longest backoff step (30 min + 20 % spread)
    by_email = contacts_by_email(mesh)
    for n in range(5):
        assert len(by_email.get(f"f{n}@example.com", [])) == 1  # every contact once
    tasks = mesh.emulator.get("/crm/v3/objects/tasks")["results"]
    assert [t["properties"]["hs_task_subject"] for t in tasks] == ["Call now"]
    reply = await mesh.admin.Settle(common_pb2.SettleRequest(), timeout=5)
    assert not reply.has_next_due  # nothing left queued


async def test_rate_limit_retry_after_and_5xx(mesh: Mesh) -> None:
    mesh.emulator.fault(mode="429", retry_after=120, count=1)
    lead = await new_contact(mesh, 1)
    await mesh.settle()
    reply = await mesh.admin.Settle(common_pb2.SettleRequest(), timeout=5)
    assert reply.has_next_due
    wait = reply.next_due_at.ToDatetime().timestamp() - mesh.clock.now().timestamp()
    assert 119 <= wait <= 121  # the CRM's Retry-After, not our 2 s first backoff
    retry = [json.loads(i.details_json) for i in await mesh.timeline(lead) if i.type == "push_retry"]
    assert retry and retry[0]["retry_after"] == 120 and "429" in retry[0]["error"]
    mesh.emulator.fault(mode="fail", status=503, count=2)
    await mesh.advance(200)
    assert len(contacts_by_email(mesh)["f1@example.com"]) == 1
    assert [i.type for i in await mesh.timeline(lead)].count("contact_pushed") == 1


async def test_rejected_push_is_dead_lettered_with_reason(mesh: Mesh) -> None:
    mesh.emulator.fault(mode="fail", status=400)
    lead = await new_contact(mesh, 2)
    await mesh.settle()
    dead = [json.loads(i.details_json) for i in await mesh.timeline(lead) if i.type == "push_dead"]
    assert dead and "HTTP 400" in dead[0]["reason"] and dead[0]["attempts"] == 1
    mesh.emulator.fault(mode="ok")


async def test_retries_end_in_dead_letter(mesh: Mesh) -> None:
    mesh.emulator.fault(mode="fail", status=500)
    lead = await new_contact(mesh, 3)
    await mesh.advance(4 * 3600)
    dead = [json.loads(i.details_json) for i in await mesh.timeline(lead) if i.type == "push_dead"]
    assert dead and dead[0]["attempts"] == 14 and "gave up after 14 tries" in dead[0]["reason"]
    reply = await mesh.admin.Settle(common_pb2.SettleRequest(), timeout=5)
    assert not reply.has_next_due


async def test_scoring_down_is_a_clear_error(settings, emulator) -> None:
    crm_settings = settings.with_overrides(crm_url=emulator.url, scoring_addr=f"127.0.0.1:{free_port()}",
                                           journeys_addr=f"127.0.0.1:{free_port()}", crm_tokens={"t": "tok"})
    running = await start_service("crm_sync", crm_settings)
    try:
        async with mesh_channel(running.address) as ch:
            from nurture.api.crm_sync.v1 import crm_sync_pb2_grpc

            stub = crm_sync_pb2_grpc.CrmSyncStub(ch)
            c = crm_sync_pb2.Contact(crm_id="z1", email="z@example.com")
            reply = await stub.UpsertContacts(crm_sync_pb2.UpsertContactsRequest(contacts=[c]),
                                              metadata=(("authorization", "Bearer tok"),), timeout=10)
            assert reply.results[0].status == "error" and reply.results[0].error_code == "unavailable"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RecordActivity(crm_sync_pb2.RecordActivityRequest(activity=crm_sync_pb2.Activity(
                    activity_id="a", lead_id="some-lead", kind="call")), metadata=(("authorization", "Bearer tok"),),
                    timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop(grace=0.5)
