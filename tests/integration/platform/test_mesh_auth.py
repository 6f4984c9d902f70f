"""Every gRPC method of every service, enumerated from the generated descriptors, refuses a call
without a mesh credential or with a wrong one (UNAUTHENTICATED), against the four real services; health
and reflection answer without one; crm_sync's CRM-facing API takes a CRM token instead."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import nurture.api
from nurture.api.crm_sync.v1 import crm_sync_pb2, crm_sync_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.meshauth import HEADER, Signer
from nurture.ports import free_port
from nurture.service import Running
from nurture.settings import SERVICES, Settings
from tests.conftest import mesh_channel, start_service

pytestmark = pytest.mark.anyio
CRM_TOKEN = "crm-token-for-this-test"
CRM_FACING = crm_sync_pb2.DESCRIPTOR.services_by_name["CrmSync"].full_name


def our_services() -> dict[str, ServiceDescriptor]:
    """Every service declared in protos/, from the generated modules (not a list kept by hand)."""
    found: dict[str, ServiceDescriptor] = {}
    for info in pkgutil.walk_packages(nurture.api.__path__, "nurture.api."):
        if info.name.endswith("_pb2"):
            for service in importlib.import_module(info.name).DESCRIPTOR.services_by_name.values():
                found[service.full_name] = service
    return found


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[dict[str, Running]]:
    settings = settings.with_overrides(crm_tokens={"test-crm": CRM_TOKEN}, crm_url=f"http://127.0.0.1:{free_port()}",
                                       smtp_url=f"smtp://127.0.0.1:{free_port()}",
                                       **{f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES})
    running: dict[str, Running] = {}
    try:
        for name in SERVICES:
            running[name] = await start_service(name, settings)
        yield running
    finally:
        for r in running.values():
            await r.stop(grace=0.2)


async def served(address: str) -> list[str]:
    """The services a server lists through reflection, asked without any credential."""
    async with grpc.aio.insecure_channel(address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        async for reply in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                     timeout=5):
            return [s.name for s in reply.list_services_response.service]
    raise AssertionError("no reflection reply")


async def call(ch: grpc.aio.Channel, service: ServiceDescriptor, method: MethodDescriptor,
               metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    """Call one method with an empty request (any message parses from no bytes); its status code."""
    path = f"/{service.full_name}/{method.name}"
    try:
        if method.client_streaming:
            multi: Any = ch.stream_stream(path) if method.server_streaming else ch.stream_unary(path)
            reply = multi(iter([b""]), metadata=metadata, timeout=5)
        else:
            multi = ch.unary_stream(path) if method.server_streaming else ch.unary_unary(path)
            reply = multi(b"", metadata=metadata, timeout=5)
        if method.server_streaming:
            async for _ in reply:
                pass
        else:
            await reply
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def wrong(path: str) -> list[tuple[str, str]]:
    """A well-formed credential made with another key, and a CRM token that is not one."""
    return [(HEADER, Signer("not-the-mesh-token").header(path)), ("authorization", "Bearer not-a-crm-token")]


async def test_every_method_refuses_calls_without_a_valid_credential(mesh: dict[str, Running]) -> None:
    services = our_services()
    assert {"nurture.api.scoring.v1.Scoring", "nurture.api.common.v1.Admin", CRM_FACING} <= set(services)
    covered: set[str] = set()
    refused: list[str] = []
    for process, running in mesh.items():
        names = [n for n in await served(running.address) if n in services]
        assert names, f"{process} serves none of our services"
        covered.update(names)
        async with grpc.aio.insecure_channel(running.address) as ch:
            for name in names:
                for method in services[name].methods:
                    path = f"/{name}/{method.name}"
                    for label, metadata in (("none", []), ("wrong", wrong(path))):
                        code = await call(ch, services[name], method, metadata)
                        assert code == grpc.StatusCode.UNAUTHENTICATED, f"{process} {path} ({label}): {code}"
                    refused.append(path)
    assert covered == set(services), f"declared but served by no process: {set(services) - covered}"
    assert len(refused) >= 40


async def test_health_and_reflection_answer_without_a_credential(mesh: dict[str, Running]) -> None:
    for running in mesh.values():
        async with grpc.aio.insecure_channel(running.address) as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert await served(running.address)


async def test_signed_calls_pass_and_the_crm_api_takes_the_crm_token(mesh: dict[str, Running]) -> None:
    scoring, crm = mesh["scoring"].address, mesh["crm_sync"].address
    async with mesh_channel(scoring) as ch:
        reply = await scoring_pb2_grpc.EchoStub(ch).Echo(scoring_pb2.EchoRequest(payload=b"hi"), timeout=5)
        assert reply.payload == b"hi"
    empty = crm_sync_pb2.UpsertContactsRequest()
    # The CRM holds its CRM token, not the mesh key: the token alone gets past authentication
    # (here to the request's own error), and the mesh key alone does not stand in for it.
    async with grpc.aio.insecure_channel(crm) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await crm_sync_pb2_grpc.CrmSyncStub(ch).UpsertContacts(
                empty, metadata=[("authorization", f"Bearer {CRM_TOKEN}")], timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with mesh_channel(crm) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await crm_sync_pb2_grpc.CrmSyncStub(ch).UpsertContacts(empty, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with grpc.aio.insecure_channel(crm) as ch:  # its other services are the mesh's: the CRM token opens none
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await scoring_pb2_grpc.EchoStub(ch).Echo(scoring_pb2.EchoRequest(), timeout=5,
                                                   metadata=[("authorization", f"Bearer {CRM_TOKEN}")])
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

