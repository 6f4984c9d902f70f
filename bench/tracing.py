"""What the mesh's RPC plumbing costs every call: unary echo RPC/s on a plain grpc.aio server and client,
against the same with the mesh's tracing (one server span per RPC exported to a file, traceparent
propagated by the mesh channel) and call signing (nurture.meshauth), measured in the same run.
Each mesh call is made inside a client span, a root sampled at `--sample-ratio` (the server span follows
its decision, as every hop of the mesh does); 1 records every call, the default is the mesh's default
(NURTURE_TRACE_SAMPLE_RATIO). Plain calls make no span.

The mesh is measured twice: traced at `--sample-ratio`, and untraced (ratio 0: the operator's "off",
every other part of the plumbing, call signing included, unchanged). `traced / untraced` is what tracing
itself costs; `untraced / plain` is what the rest of the plumbing costs against bare gRPC. A process has
one tracer provider, so each arm runs in a child process of its own, and the arms take turns (three
rounds, best of each, against the shared machine's noise); every arm also measures its own plain
baseline, so the ratios are within one process. Prints the figures, then one JSON line with all.

    .venv/bin/python bench/tracing.py [--calls 20000] [--sample-ratio 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from opentelemetry import trace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._mesh import add_database_arg  # noqa: E402
from nurture import telemetry  # noqa: E402
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc  # noqa: E402
from nurture.rpc import channel, start_server  # noqa: E402
from nurture.service import tune_for_latency  # noqa: E402
from nurture.settings import Settings, load_settings  # noqa: E402


class Echo(scoring_pb2_grpc.EchoServicer):
    async def Echo(self, request: scoring_pb2.EchoRequest, context: grpc.aio.ServicerContext) -> scoring_pb2.EchoReply:
        return scoring_pb2.EchoReply(payload=request.payload)


async def rate(ch: grpc.aio.Channel, calls: int, traced: bool, concurrency: int = 32) -> tuple[float, float]:
    """Calls per second, and this process's CPU milliseconds per call (client and server both). A
    `traced` call is made inside a client span (the head of its trace, as the gateway's request span
    is); a plain one without any, so the plain baseline pays nothing for tracing."""
    stub = scoring_pb2_grpc.EchoStub(ch)
    todo = iter(range(calls))
    tracer = trace.get_tracer("bench")

    async def worker() -> None:
        for _ in todo:
            if traced:
                with tracer.start_as_current_span("client"):
                    await stub.Echo(scoring_pb2.EchoRequest(payload=b"x" * 200), timeout=5)
            else:
                await stub.Echo(scoring_pb2.EchoRequest(payload=b"x" * 200), timeout=5)

    await stub.Echo(scoring_pb2.EchoRequest(payload=b"warm"), timeout=5)
    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / calls


async def arm(calls: int, ratio: float) -> dict[str, float]:
    """One round of this process's arm: the plain echo and the mesh's, traced at `ratio`."""
    settings = load_settings(environ={}, data_dir=Path(tempfile.mkdtemp()), trace_sample_ratio=ratio)
    provider = telemetry.setup("bench", settings)

    def register(server: grpc.aio.Server) -> list[str]:
        scoring_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
        return [scoring_pb2.DESCRIPTOR.services_by_name["Echo"].full_name]

    plain_server = grpc.aio.server()
    scoring_pb2_grpc.add_EchoServicer_to_server(Echo(), plain_server)
    port = plain_server.add_insecure_port("127.0.0.1:0")
    await plain_server.start()
    mesh_server = await start_server(name="bench", port=0, register=register, mesh_tokens=["bench-mesh-token"])
    # As every service runs once it has started (nurture.service.main): what was built so far frozen out of
    # the garbage collector's scans, and the GIL's switch interval at 1 ms. Both arms alike.
    tune_for_latency()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain_ch, \
            channel(f"127.0.0.1:{mesh_server.port}", "bench-mesh-token") as mesh_ch:
        plain, plain_cpu = await rate(plain_ch, calls, traced=False)
        mesh, mesh_cpu = await rate(mesh_ch, calls, traced=True)
    await plain_server.stop(0)
    await mesh_server.stop(0)
    provider.shutdown()
    return {"plain_rps": plain, "plain_cpu": plain_cpu, "mesh_rps": mesh, "mesh_cpu": mesh_cpu}


def run_arm(calls: int, ratio: float) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--arm", str(ratio), "--calls", str(calls)],
                         check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main(calls: int, ratio: float) -> dict[str, float]:
    rounds: dict[str, list[dict[str, float]]] = {"traced": [], "untraced": []}
    for _ in range(3):
        rounds["traced"].append(run_arm(calls // 3, ratio))
        rounds["untraced"].append(run_arm(calls // 3, 0.0))

    def best(label: str, key: str) -> float:
        return max(r[key] for r in rounds[label]) if key.endswith("rps") else min(r[key] for r in rounds[label])

    plain = max(best("traced", "plain_rps"), best("untraced", "plain_rps"))
    plain_cpu = min(best("traced", "plain_cpu"), best("untraced", "plain_cpu"))
    traced, traced_cpu = best("traced", "mesh_rps"), best("traced", "mesh_cpu")
    untraced, untraced_cpu = best("untraced", "mesh_rps"), best("untraced", "mesh_cpu")
    return {"sample_ratio": ratio, "plain_echo_rps": round(plain, 1), "traced_echo_rps": round(traced, 1),
            "untraced_echo_rps": round(untraced, 1), "traced / plain": round(traced / plain, 3),
            "untraced / plain": round(untraced / plain, 3), "traced / untraced": round(traced / untraced, 3),
            "plain_cpu_ms_per_call": round(plain_cpu, 3), "traced_cpu_ms_per_call": round(traced_cpu, 3),
            "untraced_cpu_ms_per_call": round(untraced_cpu, 3), "cpu traced / plain": round(traced_cpu / plain_cpu, 3),
            "cpu untraced / plain": round(untraced_cpu / plain_cpu, 3),
            "cpu traced / untraced": round(traced_cpu / untraced_cpu, 3)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--sample-ratio", type=float, default=Settings.trace_sample_ratio,
                        help="the share of calls traced (default: the mesh's default)")
    parser.add_argument("--arm", type=float, help=argparse.SUPPRESS)  # a child: one round at this ratio
    add_database_arg(parser)
    args = parser.parse_args()
    if args.arm is not None:
        print(json.dumps(asyncio.run(arm(args.calls, args.arm))))
        sys.exit(0)
    # Spans around gRPC calls in one process: no SQL, whatever the database.
    measured = main(args.calls, args.sample_ratio)
    result: dict[str, object] = {"database": "none (no SQL in this benchmark)", **measured}
    for k, v in result.items():
        print(f"{k:26s} {v}")
    print(json.dumps(result))
