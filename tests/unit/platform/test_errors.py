"""nurture.errors: one hierarchy, one gRPC status and one HTTP answer per error, one set of retryable codes."""

from __future__ import annotations

import json

import grpc
import pytest

from nurture import errors


def _as_received(error: errors.NurtureError) -> grpc.aio.AioRpcError:
    """The error as a caller in another process sees it (status code and message string)."""
    return grpc.aio.AioRpcError(error.grpc_status, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                details=error.status_details())


@pytest.mark.parametrize(("error", "status", "http", "code"), [
    (errors.InvalidArgument("email is not an address", details={"fields": {"email": "x"}}),
     grpc.StatusCode.INVALID_ARGUMENT, 422, "invalid"),
    (errors.NotFound("no lead l-1"), grpc.StatusCode.NOT_FOUND, 404, "not_found"),
    (errors.NotFound("no journey x", code="journey_not_found"), grpc.StatusCode.NOT_FOUND, 404, "journey_not_found"),
    (errors.Conflict("email taken", details={"field": "email"}), grpc.StatusCode.ALREADY_EXISTS, 409, "conflict"),
    (errors.Unavailable("retry later"), grpc.StatusCode.UNAVAILABLE, 503, "unavailable"),
    (errors.Internal("internal error (KeyError); see trace 0"), grpc.StatusCode.INTERNAL, 500, "internal"),
])
def test_a_service_refusal_reaches_http_with_its_status_code_and_details(
        error: errors.NurtureError, status: grpc.StatusCode, http: int, code: str) -> None:
    assert error.grpc_status == status
    answered = errors.http_error_from_rpc(_as_received(error))
    assert (answered.status, answered.code, answered.details) == (http, code, error.details)
    assert error.message in answered.message
    # The gateway's own refusal of the same kind answers alike.
    own = errors.HttpError.of(error)
    assert (own.status, own.code, own.details) == (answered.status, answered.code, answered.details)
    assert answered.body() == {"error": {"code": code, "message": answered.message, "details": error.details}}


def test_unavailable_asks_for_a_retry_with_retry_after() -> None:
    answered = errors.http_error_from_rpc(_as_received(errors.Unavailable("storage contention")))
    assert answered.headers == {"Retry-After": "2"} and errors.HttpError.of(errors.Unavailable("x")).headers


def test_a_status_message_is_json_with_code_message_and_details() -> None:
    error = errors.invalid_fields({"lead_id": "is required", "kind": "must be open or click"})
    assert json.loads(error.status_details()) == {
        "code": "invalid", "message": "lead_id is required; kind must be open or click",
        "details": {"fields": {"lead_id": "is required", "kind": "must be open or click"}}}


def test_a_plain_text_status_from_outside_our_servicers_keeps_the_table_mapping() -> None:
    plain = grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                 details="no such thing")
    assert errors.http_error_from_rpc(plain) == errors.HttpError(404, "not_found", "no such thing", {}, None)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.CANCELLED, grpc.StatusCode.UNIMPLEMENTED,
                                  grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN])
def test_transient_codes_are_retried(code: grpc.StatusCode) -> None:
    assert errors.transient(code)


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION,
                                  grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.OK])
def test_a_refusal_is_not_transient(code: grpc.StatusCode) -> None:
    assert not errors.transient(code)
