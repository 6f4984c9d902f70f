"""The gateway answers 429/503 only for real overload or unavailability, never for our own faults."""

from __future__ import annotations

import json

import grpc
import pytest

from gateway.app import _grpc_error


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def test_a_transport_limit_is_an_internal_error_not_rate_limiting() -> None:
    response = _error(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      "Stream removed (received metadata size exceeds soft limit (16402 vs. 8192)")
    reply = _grpc_error(response)
    body = json.loads(reply.body)
    assert reply.status_code == 500 and body["error"]["code"] == "internal"
    assert "Retry-After" not in reply.headers


def test_storage_contention_is_a_retryable_503() -> None:
    reply = _grpc_error(_error(grpc.StatusCode.UNAVAILABLE, json.dumps(
        {"code": "unavailable", "message": "storage contention (deadlock); retry the request"})))
    assert reply.status_code == 503 and reply.headers["Retry-After"]


@pytest.mark.parametrize("code", [grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS])
def test_an_unexpected_status_is_a_short_500_without_the_service_text(code: grpc.StatusCode) -> None:
    reply = _grpc_error(_error(code, "Unexpected <class 'OperationalError'>: (psycopg) SELECT * FROM x " * 300))
    body = json.loads(reply.body)
    assert reply.status_code == 500 and "SELECT" not in body["error"]["message"]
    assert len(body["error"]["message"]) <= 500
