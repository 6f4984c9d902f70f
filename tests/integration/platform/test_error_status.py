"""A NurtureError a servicer raises crosses a real gRPC server as its status and JSON message, and the
gateway's mapping turns that into the HTTP answer docs/API.md describes."""

from __future__ import annotations

import json

import grpc
import pytest

from nurture import errors
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.rpc import start_server
from tests.conftest import MESH_TOKEN, mesh_channel

pytestmark = pytest.mark.anyio


class _Refusing(scoring_pb2_grpc.ScoringServicer):
    async def GetLead(self, request: scoring_pb2.GetLeadRequest, context: grpc.aio.ServicerContext
                      ) -> scoring_pb2.Lead:
        raise errors.NotFound(f"no lead {request.id}", details={"id": request.id})

    async def EraseLead(self, request: scoring_pb2.EraseRequest, context: grpc.aio.ServicerContext
                        ) -> scoring_pb2.EraseReply:
        await errors.abort(context, errors.invalid_fields({"id": "is required"}))


async def test_a_raised_or_aborted_error_arrives_as_its_status_and_json() -> None:
    def register(server: grpc.aio.Server) -> list[str]:
        scoring_pb2_grpc.add_ScoringServicer_to_server(_Refusing(), server)
        return [scoring_pb2.DESCRIPTOR.services_by_name["Scoring"].full_name]

    server = await start_server(name="refusing", port=0, register=register, mesh_tokens=[MESH_TOKEN])
    try:
        async with mesh_channel(f"127.0.0.1:{server.port}") as ch:
            stub = scoring_pb2_grpc.ScoringStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetLead(scoring_pb2.GetLeadRequest(id="l-9"), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as aborted:
                await stub.EraseLead(scoring_pb2.EraseRequest(), timeout=5)
    finally:
        await server.stop(0)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert json.loads(raised.value.details() or "") == {
        "code": "not_found", "message": "no lead l-9", "details": {"id": "l-9"}}
    assert errors.http_error_from_rpc(raised.value).body() == {
        "error": {"code": "not_found", "message": "no lead l-9", "details": {"id": "l-9"}}}
    assert aborted.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    answered = errors.http_error_from_rpc(aborted.value)
    assert (answered.status, answered.code, answered.details) == (422, "invalid", {"fields": {"id": "is required"}})
