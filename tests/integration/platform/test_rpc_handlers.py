"""The mesh's wrapper around every registered gRPC method (nurture.rpc), on a real server: a call without
the mesh credential is refused before its request is read, a server-streaming method is gated too, the
server span follows the caller's traceparent (read as OpenTelemetry's propagator reads it) and records a
failure, and an unsampled call records no span while its decision travels on; only the mesh's own
methods are registered with grpc.aio (health and reflection are served through their generic handlers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from nurture import errors, telemetry
from nurture.api.crm_sync.v1 import crm_sync_pb2, crm_sync_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.meshauth import HEADER, Signer, Verifier
from nurture.rpc import ServiceServer, _outgoing, _remote_span_context, start_server
from nurture.settings import load_settings
from tests.conftest import MESH_TOKEN, mesh_channel

pytestmark = pytest.mark.anyio
ECHO = "/nurture.api.scoring.v1.Echo/Echo"
WATCH = "/nurture.api.crm_sync.v1.CrmSync/WatchChanges"
SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


class _Echo(scoring_pb2_grpc.EchoServicer):
    """Echoes, and answers with the traceparent of the span current in the handler (what a call it
    made would carry on); `fail` in the payload raises a refusal."""

    async def Echo(self, request: scoring_pb2.EchoRequest, context: grpc.aio.ServicerContext
                   ) -> scoring_pb2.EchoReply:
        if request.payload == b"fail":
            raise errors.NotFound("no such thing")
        if request.payload == b"metadata":  # the call's metadata as it arrived, one `key=value` a line
            return scoring_pb2.EchoReply(payload="\n".join(
                f"{k}={v}" for k, v in context.invocation_metadata() or () if not k.startswith(":")
                and k not in ("user-agent", "grpc-accept-encoding")).encode())
        ctx = trace.get_current_span().get_span_context()
        flags = "01" if ctx.trace_flags.sampled else "00"
        return scoring_pb2.EchoReply(payload=f"{ctx.trace_id:032x} {flags}".encode() if ctx.is_valid else b"")


class _Changes(crm_sync_pb2_grpc.CrmSyncServicer):
    async def WatchChanges(self, request: crm_sync_pb2.WatchChangesRequest, context: grpc.aio.ServicerContext
                           ) -> AsyncIterator[crm_sync_pb2.LeadChange]:
        for n in range(request.limit):
            yield crm_sync_pb2.LeadChange(cursor=str(n), lead_id=f"lead-{n}")


def _register(server: grpc.aio.Server) -> list[str]:
    scoring_pb2_grpc.add_EchoServicer_to_server(_Echo(), server)
    crm_sync_pb2_grpc.add_CrmSyncServicer_to_server(_Changes(), server)
    return [scoring_pb2.DESCRIPTOR.services_by_name["Echo"].full_name,
            crm_sync_pb2.DESCRIPTOR.services_by_name["CrmSync"].full_name]


@pytest.fixture
async def server() -> AsyncIterator[ServiceServer]:
    running = await start_server(name="wrapped", port=0, register=_register, mesh_tokens=[MESH_TOKEN])
    yield running
    await running.stop(0)


async def _finished(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    """The finished spans of `name`, once there are any (up to 5 s): the server ends its span after the
    status is on the wire (an abort sends it at once), so the caller can hear the answer first."""
    for _ in range(500):
        found = [s for s in spans.get_finished_spans() if s.name == name]
        if found:
            return found
        await asyncio.sleep(0.01)
    return []


def _signed(method: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return ((HEADER, Signer(MESH_TOKEN).header(method)), *extra)


async def test_an_unsigned_call_is_refused_before_its_request_is_read(server: ServiceServer) -> None:
    garbage = b"\xff\xff\xff\xff"  # not an EchoRequest: reading it would fail
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        raw: Any = ch.unary_unary(ECHO)  # bytes in, bytes out
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw(garbage, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as unreadable:  # signed: now it is read, and fails
            await raw(garbage, metadata=_signed(ECHO), timeout=5)
        assert unreadable.value.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OK)


async def test_a_server_streaming_method_is_gated(server: ServiceServer) -> None:
    request = crm_sync_pb2.WatchChangesRequest(limit=2)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = crm_sync_pb2_grpc.CrmSyncStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            [c async for c in stub.WatchChanges(request, timeout=5)]
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        changes = [c async for c in stub.WatchChanges(request, metadata=_signed(WATCH), timeout=5)]
    assert [c.lead_id for c in changes] == ["lead-0", "lead-1"]


async def test_the_server_span_follows_the_callers_traceparent(server: ServiceServer,
                                                               spans: InMemorySpanExporter) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = scoring_pb2_grpc.EchoStub(ch)
        spans.clear()
        reply = await stub.Echo(scoring_pb2.EchoRequest(), metadata=_signed(ECHO, ("traceparent", SAMPLED)),
                                timeout=5)
        assert reply.payload.decode() == "0af7651916cd43dd8448eb211c80319c 01"
        (span,) = await _finished(spans, ECHO)
        assert span.parent is not None and format(span.parent.span_id, "016x") == "b7ad6b7169203331"
        assert span.kind == trace.SpanKind.SERVER and span.attributes is not None
        assert span.attributes["service.instance"] == f"127.0.0.1:{server.port}"

        spans.clear()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Echo(scoring_pb2.EchoRequest(payload=b"fail"), metadata=_signed(ECHO), timeout=5)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        (span,) = await _finished(spans, ECHO)
        assert span.status.status_code == trace.StatusCode.ERROR and span.events  # the exception recorded


async def test_an_unsampled_call_records_no_span_and_passes_its_decision_on(server: ServiceServer,
                                                                           spans: InMemorySpanExporter) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        spans.clear()
        reply = await scoring_pb2_grpc.EchoStub(ch).Echo(
            scoring_pb2.EchoRequest(), metadata=_signed(ECHO, ("traceparent", UNSAMPLED)), timeout=5)
    assert reply.payload.decode() == "0af7651916cd43dd8448eb211c80319c 00"
    assert [s.name for s in spans.get_finished_spans() if s.name == ECHO] == []


async def test_a_mesh_channel_call_carries_its_span_to_the_server(server: ServiceServer,
                                                                  spans: InMemorySpanExporter) -> None:
    async with mesh_channel(f"127.0.0.1:{server.port}") as ch:
        with trace.get_tracer("test").start_as_current_span("caller") as caller:
            reply = await scoring_pb2_grpc.EchoStub(ch).Echo(scoring_pb2.EchoRequest(), timeout=5)
    assert reply.payload.decode() == f"{caller.get_span_context().trace_id:032x} 01"


async def test_a_traceparent_after_the_credential_in_its_entry_is_read(server: ServiceServer,
                                                                       spans: InMemorySpanExporter) -> None:
    """A server reads a traceparent carried after the credential in one entry (nurture.meshauth: what
    callers of a later release send); it verifies the credential part and follows the traceparent part."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = scoring_pb2_grpc.EchoStub(ch)
        spans.clear()
        carried = ((HEADER, f"{Signer(MESH_TOKEN).header(ECHO)};{SAMPLED}"),)
        assert (await stub.Echo(scoring_pb2.EchoRequest(), metadata=carried, timeout=5)
                ).payload.decode() == "0af7651916cd43dd8448eb211c80319c 01"
        (span,) = await _finished(spans, ECHO)
        assert span.parent is not None and format(span.parent.span_id, "016x") == "b7ad6b7169203331"
        # The unsampled decision travels the same way, and a forged credential is refused with it.
        unsampled = ((HEADER, f"{Signer(MESH_TOKEN).header(ECHO)};{UNSAMPLED}"),)
        assert (await stub.Echo(scoring_pb2.EchoRequest(), metadata=unsampled, timeout=5)
                ).payload.decode() == "0af7651916cd43dd8448eb211c80319c 00"
        forged = ((HEADER, f"{Signer('other').header(ECHO)};{SAMPLED}"),)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Echo(scoring_pb2.EchoRequest(), metadata=forged, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_mesh_channel_sends_one_metadata_entry_with_the_traceparent_after_the_credential(
        server: ServiceServer, spans: InMemorySpanExporter) -> None:
    """The caller's half of one entry a call (nurture.meshauth): `x-nurture-mesh: <credential>;<traceparent>`
    and no `traceparent` entry inside a span (sampled or not); the credential alone outside one. The
    server verifies it and follows the trace."""
    async with mesh_channel(f"127.0.0.1:{server.port}") as ch:
        stub = scoring_pb2_grpc.EchoStub(ch)
        tracer = telemetry.provider("t", load_settings(environ={}, trace_sample_ratio=1.0)).get_tracer("test")
        for root in (tracer.start_span("caller"), trace.NonRecordingSpan(trace.SpanContext(
                0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, trace.TraceFlags(0)))):
            with telemetry.as_current(root):
                reply = await stub.Echo(scoring_pb2.EchoRequest(payload=b"metadata"), timeout=5)
            ctx = root.get_span_context()
            (entry,) = reply.payload.decode().splitlines()
            key, _, value = entry.partition("=")
            credential, separator, traceparent = value.partition(";")
            assert key == HEADER and separator == ";"
            assert traceparent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
            assert Verifier([MESH_TOKEN]).problem_of(ECHO, credential) is None
        reply = await stub.Echo(scoring_pb2.EchoRequest(payload=b"metadata"), timeout=5)  # outside any span
        (entry,) = reply.payload.decode().splitlines()
        assert entry.startswith(f"{HEADER}=") and ";" not in entry
        # ... and the server follows the one entry's trace, as it follows the two entries' (below).
        with tracer.start_as_current_span("caller") as caller:
            reply = await stub.Echo(scoring_pb2.EchoRequest(), timeout=5)
        assert reply.payload.decode() == f"{caller.get_span_context().trace_id:032x} 01"


async def test_a_caller_of_the_two_entry_form_still_interoperates(server: ServiceServer,
                                                                  spans: InMemorySpanExporter) -> None:
    """During a rolling upgrade an older caller sends the credential alone and the traceparent in its
    own entry (as callers did until the one-entry release): its calls still verify, the server span
    follows its traceparent, sampled or not, and a `tracestate` entry beside either form is kept."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = scoring_pb2_grpc.EchoStub(ch)
        for traceparent, flags in ((SAMPLED, "01"), (UNSAMPLED, "00")):
            spans.clear()
            reply = await stub.Echo(scoring_pb2.EchoRequest(),
                                    metadata=_signed(ECHO, ("traceparent", traceparent)), timeout=5)
            assert reply.payload.decode() == f"0af7651916cd43dd8448eb211c80319c {flags}"
            recorded = await _finished(spans, ECHO) if flags == "01" else []
            assert [format(s.parent.span_id, "016x") for s in recorded if s.parent] == (
                ["b7ad6b7169203331"] if flags == "01" else [])
        # A tracestate (the mesh never sets one) beside the one-entry form, as beside the two-entry one.
        one_entry = ((HEADER, f"{Signer(MESH_TOKEN).header(ECHO)};{SAMPLED}"), ("tracestate", "vendor=x"))
        two_entries = _signed(ECHO, ("traceparent", SAMPLED), ("tracestate", "vendor=x"))
        for metadata in (one_entry, two_entries):
            spans.clear()
            await stub.Echo(scoring_pb2.EchoRequest(), metadata=metadata, timeout=5)
            (span,) = await _finished(spans, ECHO)
            assert span.parent is not None and span.parent.trace_state.get("vendor") == "x"


def test_the_outgoing_metadata_carries_a_tracestate_in_its_own_entry() -> None:
    """A tracestate travels in its own entry beside the combined one; a call without a mesh token sends
    its traceparent in its own entry (there is no credential to carry it)."""
    state = trace.TraceState([("vendor", "x")])
    span = trace.NonRecordingSpan(trace.SpanContext(0xABC, 0xDEF, False, trace.TraceFlags(1), state))
    with telemetry.as_current(span, end=False):
        signed = list(_outgoing(Signer(MESH_TOKEN), ECHO, [("other", "1")]))
        unsigned = list(_outgoing(Signer(""), ECHO, None))
    traceparent = f"00-{0xABC:032x}-{0xDEF:016x}-01"
    assert [k for k, _ in signed] == ["other", HEADER, "tracestate"]
    assert signed[1][1].endswith(f";{traceparent}") and signed[2][1] == "vendor=x"
    assert unsigned == [("traceparent", traceparent), ("tracestate", "vendor=x")]


def test_the_outgoing_metadata_is_a_metadata_and_iterates_as_the_entries_it_sends() -> None:
    """The channel's outgoing metadata (kept as the tuple grpc.aio copies it into) still reads and
    changes as grpc.aio's Metadata does, for whatever looks at it as one."""
    span = trace.NonRecordingSpan(trace.SpanContext(0xABC, 0xDEF, False, trace.TraceFlags(1)))
    with telemetry.as_current(span, end=False):
        out = _outgoing(Signer(MESH_TOKEN), ECHO, [("other", "1"), ("other", "2")])
    assert isinstance(out, grpc.aio.Metadata) and len(out) == 3 and bool(out)
    sent = tuple(out)
    assert [k for k, _ in sent] == ["other", "other", HEADER]
    assert out["other"] == "1" and out.get_all("other") == ["1", "2"] and HEADER in out
    assert out == grpc.aio.Metadata(*sent)
    out.add("extra", "x")
    assert tuple(out) == (*sent, ("extra", "x")) and len(out) == 4
    del out["extra"]
    assert tuple(out) == sent
    empty = _outgoing(Signer(""), ECHO, None)  # no token, no span: nothing to send
    assert isinstance(empty, grpc.aio.Metadata) and len(empty) == 0 and not empty and tuple(empty) == ()


@pytest.mark.parametrize("value", [
    SAMPLED, UNSAMPLED, "  " + SAMPLED, SAMPLED + "\t", "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
    SAMPLED + "-x", "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", SAMPLED.upper(),
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
    "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01", "", "garbage", SAMPLED + " " * 600,
])
async def test_a_traceparent_is_read_as_the_propagator_reads_it(value: str) -> None:
    expected = trace.get_current_span(TraceContextTextMapPropagator().extract({"traceparent": value})
                                      ).get_span_context()
    got = _remote_span_context(value)
    assert got == (expected if expected.is_valid else None)
    with_state = _remote_span_context(value, "vendor=x")
    assert (with_state is not None) == expected.is_valid


async def test_only_the_mesh_methods_are_registered_and_health_and_reflection_still_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """grpc.aio waits on one pending request per registered method for every call it accepts: health and
    reflection, rarely called, are not registered (their generic handlers serve them), and still answer
    without a credential: Check, the Watch stream and reflection's list."""
    registered: list[str] = []
    add = grpc.aio._server.Server.add_registered_method_handlers

    def spy(self: Any, service_name: str, handlers: dict[str, Any]) -> None:
        registered.append(service_name)
        add(self, service_name, handlers)

    monkeypatch.setattr(grpc.aio._server.Server, "add_registered_method_handlers", spy)
    running = await start_server(name="wrapped", port=0, register=_register, mesh_tokens=[MESH_TOKEN])
    try:
        assert registered == ["nurture.api.scoring.v1.Echo", "nurture.api.crm_sync.v1.CrmSync"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            health_stub = health_pb2_grpc.HealthStub(ch)
            reply = await health_stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            watch = health_stub.Watch(health_pb2.HealthCheckRequest(service="nurture.api.scoring.v1.Echo"), timeout=5)
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for answer in reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(iter([request]),
                                                                                                timeout=5):
                listed = {s.name for s in answer.list_services_response.service}
                break
        assert {"nurture.api.scoring.v1.Echo", "grpc.health.v1.Health"} <= listed
        async with mesh_channel(f"127.0.0.1:{running.port}") as ch:  # the mesh's methods as before
            assert isinstance(await scoring_pb2_grpc.EchoStub(ch).Echo(scoring_pb2.EchoRequest(), timeout=5),
                              scoring_pb2.EchoReply)
    finally:
        await running.stop(0)


def test_a_span_context_unpacks_as_the_mesh_reads_it() -> None:
    """nurture.rpc unpacks OpenTelemetry's SpanContext (a tuple) instead of reading its properties, and
    the mesh's RecordedSpan keeps `context` as an attribute: both must stay what the properties say."""
    state = trace.TraceState([("k", "v")])
    ctx = trace.SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=trace.TraceFlags(1), trace_state=state)
    trace_id, span_id, remote, flags, kept_state, valid = ctx
    assert (trace_id, span_id, remote, flags, kept_state, valid) == (
        ctx.trace_id, ctx.span_id, ctx.is_remote, ctx.trace_flags, ctx.trace_state, ctx.is_valid)
    assert ctx[3] & trace.TraceFlags.SAMPLED and not trace.INVALID_SPAN_CONTEXT[5]
    # The mesh's own provider (the process's global one depends on which tests ran before in it).
    span = telemetry.provider("t", load_settings(environ={}, trace_sample_ratio=1.0)).get_tracer("test").start_span("s")
    assert span.context is span.get_span_context() and span.context.is_valid  # type: ignore[attr-defined]
