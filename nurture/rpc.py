"""gRPC bootstrap shared by every service and client.

Servers: grpc.aio with the standard health service, reflection, a mesh-credential check and tracing
wrapped around each registered method (_MeshHandlers), and a graceful stop on SIGTERM/SIGINT. Clients:
channels with a retry policy for UNAVAILABLE, the mesh credential and trace context in metadata
(MeshChannel). Every call must pass a deadline (`timeout=DEADLINE_S`).

Authentication (nurture.meshauth): every call must carry a credential signed with the mesh key, or the
server answers UNAUTHENTICATED before any servicer runs. Open without one: gRPC health (orchestrators
probe it) and reflection (it tells only what protos/ in this public repository tells). A server may name
services that authenticate their own callers instead (`self_authenticated`: crm_sync's CRM-facing API,
which takes a CRM token).

Tracing is done by the server's method wrappers and the client channel's own callables rather than the
stock instrumentation, which was measured to halve Python gRPC throughput: the server opens one span
per RPC, the client only injects the W3C `traceparent` of the current span (no client span), so the
cost is one span per hop, and an unsampled hop records nothing (nurture.telemetry).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TypeAlias, cast

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from nurture import telemetry
from nurture.addresses import grpc_target
from nurture.errors import MAX_STATUS_MESSAGE, Internal, NurtureError, Unavailable
from nurture.listen import BIND_RETRY_S, bind_retrying
from nurture.meshauth import HEADER as MESH_HEADER
from nurture.meshauth import TRACE_SEPARATOR, Signer, Verifier

log = logging.getLogger(__name__)

DEADLINE_S = 5.0
LONG_DEADLINE_S = 120.0
MAX_MESSAGE_BYTES = 32 * 1024 * 1024

# grpc ships no type information (to mypy its names are Any); what the mesh passes through it is named here.
ChannelOption: TypeAlias = tuple[str, str | int]
MetadataItem: TypeAlias = tuple[str, str | bytes]  # a `-bin` header's value is bytes
Serializer: TypeAlias = Callable[[Message], bytes]
Deserializer: TypeAlias = Callable[[bytes], Message]

def _service_config(policy: str) -> str:
    return json.dumps({
        "loadBalancingConfig": [{policy: {}}],
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    })


def _options(policy: str) -> list[ChannelOption]:
    return [
        ("grpc.service_config", _service_config(policy)),
        ("grpc.enable_retries", 1),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        # Each channel keeps its own connections: by default gRPC shares them between the channels of a
        # process to one address, and a new channel to a server just started on an address whose earlier
        # server had gone (a port the OS handed out again, a restart) inherited that connection's failure
        # and its reconnect backoff, so its first calls failed "connection refused" (seen in CI).
        ("grpc.use_local_subchannel_pool", 1),
    ]


# One address, one server: pick_first, whose channel connects again at once when a call finds the server
# just started. round_robin reports every backend failing until its reconnect backoff (a second) has
# passed, and so failed the first calls to a service that had only just begun to listen (CI, 4 tests).
_CHANNEL_OPTIONS = _options("pick_first")
# An address naming several replicas (a list, or a `dns:` target resolving to several: nurture.addresses)
# keeps a connection to each and spreads its calls over the ones that answer; pick_first would send every
# call to one. A call that meets a replica going away is UNAVAILABLE, which the retry policy retries.
_BALANCED_OPTIONS = _options("round_robin")


def channel_options(target: str) -> list[ChannelOption]:
    """The options of a channel to a gRPC target (nurture.addresses.grpc_target)."""
    several = target.startswith("dns:") or (target.startswith(("ipv4:", "ipv6:")) and "," in target)
    return _BALANCED_OPTIONS if several else _CHANNEL_OPTIONS


# The mesh's own hops carry W3C trace context only: a `traceparent` (and, rarely, a `tracestate`) is read
# and written here directly, not through the global composite propagator, which also reads and writes
# baggage the mesh never sets (a tenth of a small call's tracing cost).
_W3C = TraceContextTextMapPropagator()
_TRACEPARENT = "traceparent"
_TRACESTATE = "tracestate"
# The W3C format as OpenTelemetry's propagator reads it: version, trace id, span id, flags, and what a
# later version may add.
_TRACEPARENT_FORMAT = re.compile(r"[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_SAMPLED = trace.TraceFlags.SAMPLED
_NO_STATE = trace.DEFAULT_TRACE_STATE
_new_tuple = tuple.__new__


def _remote_span_context(traceparent: object, tracestate: object = None) -> trace.SpanContext | None:
    """The caller's span context from its `traceparent` value (None when absent or malformed): the
    propagator's rules without its carrier, getter and Context. A `tracestate` (which the mesh never
    sets) goes through the propagator itself."""
    if not isinstance(traceparent, str) or len(traceparent) > 512:
        return None
    if tracestate is not None:
        ctx = trace.get_current_span(_W3C.extract({_TRACEPARENT: traceparent, _TRACESTATE: tracestate})
                                     ).get_span_context()
        return ctx if ctx.is_valid else None
    match = _TRACEPARENT_FORMAT.fullmatch(traceparent)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN or version == "ff" or (version == "00" and rest):
        return None
    # The SpanContext tuple made directly: its `__new__` (a Python call) only fills the defaults and works
    # out `is_valid`, which the checks above have settled (neither id is zero; the format bounds them).
    return _new_tuple(trace.SpanContext, (int(trace_id, 16), int(span_id, 16), True,
                                          trace.TraceFlags(int(flags, 16)), _NO_STATE, True))


class _MeshHandlers:
    """What the mesh adds to every method a server registers: the gate (mesh credential) first, then
    one server span per unary RPC, parented by the caller's traceparent. Each method's handler is
    wrapped once, when it is registered, and grpc.aio then finds the wrapper in its table of registered
    methods: no server interceptor, which costs every call a chain of coroutines in grpc.aio (its
    `intercept_service`, the continuation, the gate) before the handler is even found. The wrapper
    takes the request undecoded, so a refused call is answered without reading it."""

    def __init__(self, service_name: str, gate: _MeshGate, open_services: frozenset[str], instance: str) -> None:
        self._tracer = telemetry.tracer(f"nurture.{service_name}.rpc")
        self._gate = gate
        self._open = open_services
        # Which replica answered (host:port): with several behind one address, an operator reading a
        # trace needs to know.
        self._instance = instance
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def wrap(self, method: str, handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
        """The handler of `method` (its full name, `/package.Service/Method`) with the gate and tracing."""
        if handler is None:
            return None
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            gate = None if method.rsplit("/", 1)[0].lstrip("/") in self._open else self._gate
            wrapped = self._wrapped[method] = self._make(method, handler, gate)
        return wrapped

    def _make(self, method: str, handler: grpc.RpcMethodHandler, gate: _MeshGate | None) -> grpc.RpcMethodHandler:
        parse = handler.request_deserializer
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(method, handler.unary_unary, parse, gate),
                                                       response_serializer=serialize)
        # Streaming methods (crm_sync's WatchChanges; health and reflection are not wrapped) are gated,
        # not traced.
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_gated_stream(method, handler.unary_stream, parse, gate),
                                                        response_serializer=serialize)
        if gate is None:
            return handler
        # Client-streaming (unused in the mesh): the requests are read only as the handler iterates
        # them, after the gate.
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_gated(method, handler.stream_unary, gate),
                                                        request_deserializer=parse, response_serializer=serialize)
        return grpc.stream_stream_rpc_method_handler(_gated_stream(method, handler.stream_stream, None, gate),
                                                     request_deserializer=parse, response_serializer=serialize)

    def _unary(self, method: str, inner: _Unary, parse: Callable[[bytes], Message] | None,
               gate: _MeshGate | None) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message | None]]:
        tracer = self._tracer
        attributes = {"rpc.method": method, "service.instance": self._instance}

        async def serve(raw: bytes, context: grpc.aio.ServicerContext) -> Message | None:
            credential = traceparent = tracestate = None
            for key, value in context.invocation_metadata() or ():
                if key == MESH_HEADER:
                    credential = value
                elif key == _TRACEPARENT:
                    traceparent = value
                elif key == _TRACESTATE:
                    tracestate = value
            # The traceparent rides after the credential in its entry (nurture.meshauth: what callers send
            # since the release after 895dc25); a separate `traceparent` entry, as older callers send it
            # during a rolling upgrade and callers without a mesh token always do, is read as before.
            if isinstance(credential, str) and TRACE_SEPARATOR in credential:
                credential, _, traceparent = credential.partition(TRACE_SEPARATOR)
            # The gate is a plain call, awaited only to refuse: a coroutine per call costs more than the check.
            if gate is not None and (problem := gate.problem(method, credential)) is not None:
                await gate.refuse(problem, context)
            # (a method registered without a deserializer is handed its request as it came)
            request = parse(raw) if parse is not None else cast(Message, raw)
            remote = _remote_span_context(traceparent, tracestate) if traceparent is not None else None
            if remote is not None and not remote[3] & _SAMPLED:  # its flags (see _outgoing), not two properties
                # The head chose not to record this trace: no span at all (not even a non-recording one,
                # whose sampler call, ids and context cost a small call a few percent). The caller's
                # context becomes current, so what this call sends on carries the same decision.
                span: trace.Span = trace.NonRecordingSpan(remote)
                current = telemetry.Current(span, False, True, True)  # as_current(span, end=False), one call less
            else:
                span = tracer.start_child(method, remote, trace.SpanKind.SERVER, attributes)
                current = telemetry.Current(span, True, True, True)  # as_current(span)
            # The servicer is awaited here, not through a helper coroutine of its own (one frame less a
            # call); what it raises becomes the call's status (_failed).
            with current:
                try:
                    return await inner(request, context)
                except grpc.aio.AbortError:  # the servicer chose its status and message
                    raise
                except Exception as exc:
                    await _failed(exc, context, span)
                    raise  # not reached: _failed aborts (raises grpc.aio.AbortError)

        return serve


def _credential(context: grpc.aio.ServicerContext) -> object:
    return next((v for k, v in context.invocation_metadata() or () if k == MESH_HEADER), None)


_Handler: TypeAlias = Callable[[object, grpc.aio.ServicerContext], object]


def _gated(method: str, inner: Callable[[object, grpc.aio.ServicerContext], Awaitable[object]],
           gate: _MeshGate) -> Callable[[object, grpc.aio.ServicerContext], Awaitable[object]]:
    async def serve(requests: object, context: grpc.aio.ServicerContext) -> object:
        await gate.check(method, _credential(context), context)
        return await inner(requests, context)

    return serve


def _gated_stream(method: str, inner: _Handler, parse: Callable[[bytes], Message] | None,
                  gate: _MeshGate | None) -> Callable[[bytes, grpc.aio.ServicerContext], object]:
    """A streaming handler behind the gate; `parse` decodes its one request after the gate."""
    if inspect.isasyncgenfunction(inner):
        async def stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
            if gate is not None:
                await gate.check(method, _credential(context), context)
            async for item in cast(AsyncIterator[object], inner(parse(raw) if parse is not None else raw, context)):
                yield item

        return stream

    async def written(raw: bytes, context: grpc.aio.ServicerContext) -> object:  # a handler that writes itself
        if gate is not None:
            await gate.check(method, _credential(context), context)
        return await cast(Awaitable[object], inner(parse(raw) if parse is not None else raw, context))

    return written


class _MeshGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler whose methods are wrapped by `_MeshHandlers` (looked up only for a method not
    in the server's table of registered ones)."""

    def __init__(self, inner: grpc.GenericRpcHandler, handlers: _MeshHandlers) -> None:
        self._inner = inner
        self._handlers = handlers

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.wrap(details.method, self._inner.service(details))


class _MeshServer(grpc.aio.Server):  # type: ignore[misc]
    """The server as `register` sees it: every servicer it adds is wrapped (_MeshHandlers)."""

    def __init__(self, inner: grpc.aio.Server, handlers: _MeshHandlers) -> None:
        self._inner = inner
        self._handlers = handlers

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._inner.add_generic_rpc_handlers([_MeshGeneric(h, self._handlers) for h in generic_rpc_handlers])

    def add_registered_method_handlers(self, service_name: str,
                                       method_handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._inner.add_registered_method_handlers(service_name, {
            name: self._handlers.wrap(f"/{service_name}/{name}", handler) for name, handler in method_handlers.items()})

    def add_insecure_port(self, address: str) -> int:
        return int(self._inner.add_insecure_port(address))

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return int(self._inner.add_secure_port(address, server_credentials))

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self, grace: float | None) -> None:
        await self._inner.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return bool(await self._inner.wait_for_termination(timeout))


_Unary: TypeAlias = Callable[[Message, grpc.aio.ServicerContext], Awaitable[Message | None]]


async def _failed(exc: Exception, context: grpc.aio.ServicerContext, span: trace.Span) -> None:
    """Answers a call whose servicer raised `exc` (not an abort) with its status (see unexpected_error);
    raises grpc.aio.AbortError as `context.abort` does, or `exc` itself when the servicer had set a status."""
    if isinstance(exc, NurtureError):  # a refusal raised rather than aborted: the same status
        await context.abort(exc.grpc_status, exc.status_details())
    chosen = context.code()
    if chosen not in (None, grpc.StatusCode.OK):
        # The servicer set a status before raising (grpc's generated base class does so for a
        # method a service does not implement: callers rely on UNIMPLEMENTED).
        raise exc
    error = unexpected_error(exc, span)
    await context.abort(error.grpc_status, error.status_details())


def unexpected_error(exc: Exception, span: trace.Span | None = None) -> NurtureError:
    """The error for an exception a servicer did not handle: a short message with a machine code, never
    SQL or a stack; the whole exception goes to the log and the span. Lost storage races
    (ContentionError) are transient: Unavailable."""
    from nurture.db import ContentionError  # the platform's storage module; imported late (rpc is lower)

    context = span.get_span_context() if span is not None else None
    trace_id = format(context.trace_id, "032x") if context is not None and context.is_valid else "none"
    if span is not None:
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
    if isinstance(exc, ContentionError):
        log.warning("%s (trace %s)", exc, trace_id)
        return Unavailable(str(exc)[:MAX_STATUS_MESSAGE], details={"retryable": True})
    log.error("unhandled %s (trace %s)", type(exc).__name__, trace_id, exc_info=exc)
    return Internal(f"internal error ({type(exc).__name__}); see trace {trace_id}"[:MAX_STATUS_MESSAGE],
                    details={"trace_id": trace_id})


class _Wire(grpc.aio.Metadata):  # type: ignore[misc]  # grpc has no type information: its base is Any
    """A call's outgoing metadata as the mesh's channel hands it to grpc.aio, which only asks its length
    and copies its entries into a tuple: the entries are kept as that tuple. grpc.aio's own Metadata builds
    an OrderedDict of lists entry by entry (`add`) and iterates it back through a generator, which cost a
    signed call about twice what the plain call's empty Metadata costs (1.1 against 0.6 µs, timeit). The
    mapping is made from the entries only if something reads or changes the object as a Metadata."""

    def __init__(self, *items: MetadataItem) -> None:  # Metadata's __init__ (the mapping) only on demand
        self._items: tuple[MetadataItem, ...] | None = items

    def __getattr__(self, name: str) -> object:
        # Reached only for an attribute not set: Metadata's `_metadata`, the mapping, until it is made.
        if name != "_metadata" or self._items is None:
            raise AttributeError(name)
        items, self._items = self._items, None
        grpc.aio.Metadata.__init__(self, *items)
        return self._metadata

    def __len__(self) -> int:
        items = self._items
        return len(items) if items is not None else int(super().__len__())

    def __iter__(self) -> Iterator[MetadataItem]:
        items = self._items
        return iter(items) if items is not None else cast(Iterator[MetadataItem], super().__iter__())


def _outgoing(signer: Signer, method: str, metadata: Iterable[MetadataItem] | None) -> grpc.aio.Metadata:
    """A call's metadata plus its mesh credential and, inside a span, the W3C trace context (sampled or
    not: the decision travels with it). The traceparent rides in the credential's entry, after a `;`
    (`x-nurture-mesh: <credential>;<traceparent>`, nurture.meshauth): one entry a call instead of two,
    each of which gRPC encodes and decodes on both sides and grpc.aio wraps in Python objects. Every
    server reads it since the release before this one (895dc25), and still reads the two-entry form of
    older callers. A call made without a mesh token sends its traceparent in its own entry (there is no
    credential to carry it); a `tracestate` (which the mesh never sets) always has its own.
    Made as a Metadata (grpc.aio takes one as it is: given a list it checks it against typing's Sequence,
    copies it into a tuple and makes a Metadata from that), and as the tuple it is sent as (_Wire)."""
    # A SpanContext is a tuple (trace id, span id, is_remote, flags, trace state, is_valid): unpacked, not
    # read through five of its properties, each a call (the layout is checked by test_rpc_handlers.py).
    trace_id, span_id, _, flags, state, valid = telemetry.current_span().get_span_context()
    if signer.signs:
        credential = signer.header(method)
        mesh: MetadataItem = (MESH_HEADER, f"{credential}{TRACE_SEPARATOR}00-{trace_id:032x}-{span_id:016x}-{flags:02x}"
                              if valid else credential)
    elif valid:
        mesh = (_TRACEPARENT, f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}")
    else:
        return _Wire(*metadata) if metadata else _Wire()
    if metadata or (valid and state):
        return _Wire(*(metadata or ()), mesh, *((_TRACESTATE, state.to_header()),) if valid and state else ())
    return _Wire(mesh)


class _Signed:
    """A multi-callable that adds the mesh credential and the trace context to each call's metadata."""

    def __init__(self, inner: grpc.aio.UnaryUnaryMultiCallable | grpc.aio.UnaryStreamMultiCallable, method: str,
                 signer: Signer) -> None:
        self._inner, self._method, self._signer = inner, method, signer

    def __call__(self, request: Message, *, timeout: float | None = None,
                 metadata: Iterable[MetadataItem] | None = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> object:
        return self._inner(request, timeout=timeout, metadata=_outgoing(self._signer, self._method, metadata),
                           credentials=credentials, wait_for_ready=wait_for_ready, compression=compression)


class _SignedUnaryUnary(_Signed, grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[misc]  # grpc has no type information: its base is Any
    pass


class _SignedUnaryStream(_Signed, grpc.aio.UnaryStreamMultiCallable):  # type: ignore[misc]  # grpc has no type information: its base is Any
    pass


class MeshChannel(grpc.aio.Channel):  # type: ignore[misc]  # grpc has no type information: its base is Any
    """A channel whose unary and server-streaming calls carry the mesh credential and the trace context.
    Added by wrapping each method's callable, not by a grpc.aio client interceptor: an interceptor puts
    an extra task and call object in front of every call, measured at about 6% of a small call's CPU
    (bench/tracing.py). Streaming requests (unused in the mesh) go unsigned, as before."""

    def __init__(self, inner: grpc.aio.Channel, signer: Signer) -> None:
        self._inner = inner
        self._signer = signer

    async def __aenter__(self) -> MeshChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.close(None)

    async def close(self, grace: float | None = None) -> None:
        await self._inner.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._inner.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._inner.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._inner.channel_ready()

    def unary_unary(self, method: str, request_serializer: Serializer | None = None,
                    response_deserializer: Deserializer | None = None,
                    _registered_method: bool | None = False) -> grpc.aio.UnaryUnaryMultiCallable:
        inner = self._inner.unary_unary(method, request_serializer, response_deserializer, _registered_method)
        return _SignedUnaryUnary(inner, method, self._signer)

    def unary_stream(self, method: str, request_serializer: Serializer | None = None,
                    response_deserializer: Deserializer | None = None,
                     _registered_method: bool | None = False) -> grpc.aio.UnaryStreamMultiCallable:
        inner = self._inner.unary_stream(method, request_serializer, response_deserializer, _registered_method)
        return _SignedUnaryStream(inner, method, self._signer)

    def stream_unary(self, method: str, request_serializer: Serializer | None = None,
                    response_deserializer: Deserializer | None = None,
                     _registered_method: bool | None = False) -> grpc.aio.StreamUnaryMultiCallable:
        return self._inner.stream_unary(method, request_serializer, response_deserializer, _registered_method)

    def stream_stream(self, method: str, request_serializer: Serializer | None = None,
                    response_deserializer: Deserializer | None = None,
                      _registered_method: bool | None = False) -> grpc.aio.StreamStreamMultiCallable:
        return self._inner.stream_stream(method, request_serializer, response_deserializer, _registered_method)


class _SyncMeshClientInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]  # grpc has no type information: its base is Any
    """The mesh credential on a blocking channel."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer

    def intercept_unary_unary(self, continuation: Callable[[grpc.ClientCallDetails, Message], object],
                              details: grpc.ClientCallDetails,
                              request: Message) -> object:
        metadata = [*(details.metadata or ()), (MESH_HEADER, self._signer.header(details.method))]
        return continuation(details._replace(metadata=metadata), request)


def channel(address: str, mesh_token: str) -> grpc.aio.Channel:
    """A client channel to a service of the mesh: every call signed with `mesh_token` (settings.mesh_token),
    retries on UNAVAILABLE, trace propagation, balanced over every replica `address` names when it
    names several (a list, or a `dns:` target: nurture.addresses; a malformed one raises AddressError).
    An empty token sends no credential (servers refuse)."""
    target = grpc_target(address)
    return MeshChannel(grpc.aio.insecure_channel(target, options=channel_options(target)), Signer(mesh_token))


def sync_channel(address: str, mesh_token: str) -> grpc.Channel:
    """A blocking channel for tools and tests, its unary calls signed with `mesh_token`."""
    target = grpc_target(address)
    plain = grpc.insecure_channel(target, options=channel_options(target))
    return grpc.intercept_channel(plain, _SyncMeshClientInterceptor(Signer(mesh_token))) if mesh_token else plain


OPEN_SERVICES = frozenset({health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME})


class _MeshGate:
    """Decides whether a call may reach its servicer: one with a valid mesh credential, or to an open
    service (see the module docstring). Refusals are logged (method and reason, never the credential),
    at most one line per second per reason with a count of the ones left out, so a flood cannot fill
    the disk."""

    def __init__(self, service_name: str, verifier: Verifier) -> None:
        self._name = service_name
        self._verifier = verifier
        self._logged: dict[str, tuple[float, int]] = {}

    async def check(self, method: str, credential: object, context: grpc.aio.ServicerContext) -> None:
        """Returns when the call carries a valid credential (`credential`: its metadata's value, None
        without one); else answers UNAUTHENTICATED (raises, as `context.abort` does)."""
        problem = self.problem(method, credential)
        if problem is not None:
            await self.refuse(problem, context)

    def problem(self, method: str, credential: object) -> str | None:
        """None when the call may go on, else why not (logged here)."""
        problem = self._verifier.problem_of(method, credential)
        if problem is not None:
            self._log(method, problem)
        return problem

    @staticmethod
    async def refuse(problem: str, context: grpc.aio.ServicerContext) -> None:
        """Answers UNAUTHENTICATED for `problem` (raises, as `context.abort` does)."""
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{problem}; every call in the mesh must be signed")

    def _log(self, method: str, problem: str) -> None:
        now = time.monotonic()
        last, skipped = self._logged.get(problem, (0.0, 0))
        if now - last < 1.0:
            self._logged[problem] = (last, skipped + 1)
            return
        self._logged[problem] = (now, 0)
        more = f" (and {skipped} more refused like it)" if skipped else ""
        log.warning("%s refused %s: %s%s", self._name, method, problem, more)


class _GenericOnly:
    """A server as health and reflection are added to it: their methods are found through their generic
    handlers, not registered. grpc.aio keeps one pending request per registered method and waits on all of
    them (asyncio.wait) for every call it accepts, so each registered method costs every call of every
    method; probes and reflection are rare, and looking them up by name when they come costs little."""

    def __init__(self, inner: grpc.aio.Server) -> None:
        self._inner = inner

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._inner.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str,
                                       method_handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        pass  # served by the generic handler added beside them


class ServiceServer:
    """A started gRPC server with health and reflection; `stop()` drains in-flight calls."""

    def __init__(self, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer, port: int):
        self.server = server
        self.health = health_servicer
        self.port = port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)

    async def stop(self, grace: float = 5.0) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)


async def start_server(
    *,
    name: str,
    port: int,
    register: Callable[[grpc.aio.Server], Iterable[str]],
    mesh_tokens: Sequence[str],
    host: str | None = None,
    self_authenticated: Iterable[str] = (),
    bind_retry_s: float = BIND_RETRY_S,
) -> ServiceServer:
    """Build, register and start a grpc.aio server. `register` adds servicers and returns the full
    names of the services it added (for health and reflection). Calls must be signed with one of
    `mesh_tokens` (settings.mesh_tokens) except to health, reflection and the `self_authenticated`
    services (full names), whose servicers must authenticate every call themselves. A port in use is
    tried again for `bind_retry_s` (nurture.listen.PortInUse after)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    # NURTURE_BIND_HOST (0.0.0.0 in containers); loopback by default.
    host = host or os.environ.get("NURTURE_BIND_HOST", "127.0.0.1")
    # Tried again for a few seconds while the port is in use (an outgoing connection may hold it as its
    # source port: nurture.listen), then PortInUse naming it.
    bound = await bind_retrying(name, host, port, lambda: server.add_insecure_port(f"{host}:{port}"),
                                retry_s=bind_retry_s)
    instance = f"{socket.gethostname() if host in ('0.0.0.0', '::', '[::]') else host}:{bound}"
    # What `register` adds gets the gate and tracing; health and reflection, added below, stay open.
    handlers = _MeshHandlers(name, _MeshGate(name, Verifier(mesh_tokens)),
                             OPEN_SERVICES | frozenset(self_authenticated), instance)
    names = list(register(_MeshServer(server, handlers)))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, _GenericOnly(server))
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        _GenericOnly(server),
    )
    await server.start()
    handle = ServiceServer(server, health_servicer, bound)
    for service_name in ["", *names]:
        await health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
    log.info("%s serving gRPC on %s:%d", name, host, bound)
    return handle


async def run_until_signalled(
    handle: ServiceServer, *, on_stop: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Serve until SIGTERM/SIGINT, then stop gracefully: health goes NOT_SERVING, in-flight calls
    finish (5 s grace), then `on_stop` closes the service's own resources."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await handle.stop()
    if on_stop is not None:
        await on_stop()


async def health_status(address: str, timeout: float = 1.0) -> str:
    """The overall health status of the server at `address` (SERVING, NOT_SERVING or UNAVAILABLE). An
    address naming several replicas is SERVING while one of them serves (the balancer picks one that
    answers, as every client's channel does)."""
    target = grpc_target(address)
    async with grpc.aio.insecure_channel(target, options=channel_options(target)) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError:
            return "UNAVAILABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
