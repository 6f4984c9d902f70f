"""A mesh channel made to a server just started on the address of one that had gone answers at once.
gRPC shares a process's connections between channels to one address by default, so such a channel
inherited the gone server's failed connection and its reconnect backoff, and its first call failed
"connection refused" (a CI failure: a test's server was given a port an earlier test's server had used).
Each mesh channel keeps its own connections (nurture.rpc's channel options)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from nurture.rpc import channel

pytestmark = pytest.mark.anyio


async def _serve(port: int) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


async def _check(ch: grpc.aio.Channel) -> health_pb2.HealthCheckResponse:
    return await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)


async def test_a_new_channel_to_a_restarted_address_does_not_inherit_the_old_failure() -> None:
    first, port = await _serve(0)
    old = channel(f"127.0.0.1:{port}", "")
    try:
        await _check(old)
        await first.stop(0)
        with pytest.raises(grpc.aio.AioRpcError):
            await _check(old)   # the old channel's connection fails, and backs off
        second, _ = await _serve(port)
        new = channel(f"127.0.0.1:{port}", "")
        try:
            assert (await _check(new)).status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await new.close()
            await second.stop(0)
    finally:
        await old.close()
