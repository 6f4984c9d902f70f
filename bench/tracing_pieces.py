"""What each piece of the mesh's RPC plumbing costs alone (timeit, the best of 7 blocks of 20,000, warm):
the caller's root span (the bench's client span, as the gateway's request span), the outgoing metadata
(credential and traceparent: nurture.rpc._outgoing), grpc.aio's own handling of it, and the server's
method wrapper (gate, traceparent, the span or the carried decision, the servicer awaited; driven
directly with a stand-in for grpc.aio's ServicerContext that only lists the metadata), at one sample
ratio. Beside bench/tracing.py, which measures the whole call: the difference between the two is what
the pieces cost inside a running call (cold caches, gRPC's C core, the event loop) beyond their own
instructions (docs/CAPACITY.md, "Where a mesh call's extra CPU goes").

    .venv/bin/python bench/tracing_pieces.py [--sample-ratio 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import timeit
from collections import namedtuple
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import trace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nurture import rpc, telemetry  # noqa: E402
from nurture.api.scoring.v1 import scoring_pb2  # noqa: E402
from nurture.meshauth import Signer, Verifier  # noqa: E402
from nurture.settings import load_settings  # noqa: E402

METHOD = "/nurture.api.scoring.v1.Echo/Echo"
# grpc.aio hands a servicer its metadata as a tuple of these (key, value) named tuples.
_Metadatum = namedtuple("_Metadatum", "key value")


def best(run: Callable[[], object], number: int = 20_000) -> float:
    """Microseconds a run, the best of 7 blocks."""
    return min(timeit.repeat(run, number=number, repeat=7)) / number * 1e6


class _Context:
    """The one thing the wrapper asks of grpc.aio's ServicerContext on a call it lets through."""

    def __init__(self, metadata: tuple[_Metadatum, ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[_Metadatum, ...]:
        return self._metadata


def _drive(make: Callable[[], Coroutine[Any, Any, object]]) -> Callable[[], None]:
    """A coroutine that never suspends, run to its end without an event loop."""
    def run() -> None:
        try:  # noqa: SIM105  (a `with suppress` would add its own cost to what is timed)
            make().send(None)
        except StopIteration:
            pass
    return run


def main(ratio: float) -> dict[str, float]:
    provider = telemetry.setup("bench", load_settings(environ={}, data_dir=Path(tempfile.mkdtemp()),
                                                      trace_sample_ratio=ratio))
    tracer = trace.get_tracer("bench")
    signer = Signer("bench-mesh-token")
    out: dict[str, float] = {}

    def client_span() -> None:
        with tracer.start_as_current_span("client"):
            pass

    out["client root span (start, current, end)"] = best(client_span)
    with tracer.start_as_current_span("client"):
        out["outgoing metadata (_outgoing)"] = best(lambda: rpc._outgoing(signer, METHOD, None))
        metadata = rpc._outgoing(signer, METHOD, None)
    init = grpc.aio._channel._BaseMultiCallable._init_metadata
    out["grpc.aio's handling of it (init, tuple)"] = best(lambda: tuple(init(metadata, None)))
    out["grpc.aio's handling of a plain call's none"] = best(lambda: tuple(init(None, None)))

    received = (_Metadatum("user-agent", "grpc-python-asyncio"), *(_Metadatum(k, v) for k, v in metadata))
    context = _Context(received)

    async def echo(request: scoring_pb2.EchoRequest, _context: object) -> scoring_pb2.EchoReply:
        return scoring_pb2.EchoReply(payload=request.payload)

    handlers = rpc._MeshHandlers("bench", rpc._MeshGate("bench", Verifier(["bench-mesh-token"])), rpc.OPEN_SERVICES,
                                 "127.0.0.1:1")
    wrapped = handlers.wrap(METHOD, grpc.unary_unary_rpc_method_handler(
        echo, request_deserializer=scoring_pb2.EchoRequest.FromString))
    assert wrapped is not None
    serve = wrapped.unary_unary
    raw = scoring_pb2.EchoRequest(payload=b"x" * 200).SerializeToString()

    async def bare(data: bytes, ctx: object) -> scoring_pb2.EchoReply:
        return await echo(scoring_pb2.EchoRequest.FromString(data), ctx)

    served = best(_drive(lambda: serve(raw, context)))
    alone = best(_drive(lambda: bare(raw, context)))
    out["server wrapper, beyond parse and servicer"] = served - alone
    provider.shutdown()
    return {k: round(v, 2) for k, v in out.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sample-ratio", type=float, default=1.0)
    args = parser.parse_args()
    for name, value in main(args.sample_ratio).items():
        print(f"{name:44s} {value:6.2f} us")
