"""What balancing over replicas costs a client, and how it spreads: Echo calls from one channel to one
server with gRPC's default policy (pick_first, what every channel used before), the same with
round_robin (what nurture.rpc uses now), and round_robin over a list of two servers. Each server is its
own process (a bare gRPC server with the mesh gate and the Echo servicer); the figures are CPU ms per
call of the client and of each server (getrusage and /proc: independent of how busy the machine is),
with the load average, and each server's share of the calls in the list phase.

    nice -n 10 .venv/bin/python -m bench.balance --calls 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time

import grpc

from nurture import rpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.ports import free_port

TOKEN = "bench-balance-token"
SERVER = """
import asyncio, sys
from nurture.rpc import start_server, run_until_signalled
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from services.scoring.servicer import EchoServicer

async def main() -> None:
    def register(server):
        scoring_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)
        return [scoring_pb2.DESCRIPTOR.services_by_name["Echo"].full_name]
    handle = await start_server(name="echo", port=int(sys.argv[1]), register=register, mesh_tokens=[sys.argv[2]])
    await run_until_signalled(handle)

asyncio.run(main())
"""


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        raw = fh.read()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _pick_first_channel(address: str) -> grpc.aio.Channel:
    """nurture.rpc's channel with gRPC's default policy instead of round_robin (the baseline)."""
    options = rpc.channel_options("127.0.0.1:1")  # one address: pick_first
    signer = rpc.Signer(TOKEN)
    return rpc.MeshChannel(grpc.aio.insecure_channel(address, options=options), signer)


async def _phase(ch: grpc.aio.Channel, calls: int, concurrency: int,
                 servers: list[subprocess.Popen[bytes]]) -> tuple[float, float, list[float]]:
    """(calls/s wall, client CPU ms per call, each server's CPU ms per call), after a warm-up."""
    stub = scoring_pb2_grpc.EchoStub(ch)
    payload = b"x" * 200
    for _ in range(200):  # warm: every subchannel connected
        await stub.Echo(scoring_pb2.EchoRequest(payload=payload), timeout=5)
    todo = iter(range(calls))

    async def worker() -> None:
        for _ in todo:
            await stub.Echo(scoring_pb2.EchoRequest(payload=payload), timeout=5)

    client0, servers0 = _client_cpu_s(), [_cpu_s(s.pid) for s in servers]
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = calls / (time.perf_counter() - start)
    client = (_client_cpu_s() - client0) * 1000 / calls
    return rate, client, [(_cpu_s(s.pid) - c0) * 1000 / calls for s, c0 in zip(servers, servers0, strict=True)]


async def run(calls: int, concurrency: int) -> None:
    ports = [free_port(), free_port()]
    servers = [subprocess.Popen([sys.executable, "-c", SERVER, str(p), TOKEN]) for p in ports]
    try:
        for p in ports:
            for _ in range(300):
                if await rpc.health_status(f"127.0.0.1:{p}") == "SERVING":
                    break
                await asyncio.sleep(0.1)
        one, both = f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
        baseline_phase = ("one server, pick_first (baseline)", lambda: _pick_first_channel(one))
        phases = [baseline_phase,
                  ("one server, round_robin", lambda: rpc.channel(one, TOKEN)),
                  ("two servers listed, round_robin", lambda: rpc.channel(both, TOKEN)),
                  (baseline_phase[0] + " again", baseline_phase[1])]  # the drift of the run
        baseline = None
        for name, make in phases:
            ch = make()
            rate, client, server = await _phase(ch, calls, concurrency, servers)
            await ch.close()
            baseline = baseline or client
            total = max(sum(server), 1e-9)
            print(f"{name:42s} client {client:.3f} CPU ms/call ({client / baseline:.2f} of baseline), "
                  f"servers {server[0]:.3f} + {server[1]:.3f} CPU ms/call (shares {server[0] / total:.2f}/"
                  f"{server[1] / total:.2f}), {rate:.0f} calls/s wall (load average {os.getloadavg()[0]:.2f})",
                  flush=True)
    finally:
        for s in servers:
            s.terminate()
        for s in servers:
            s.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(run(args.calls, args.concurrency))


if __name__ == "__main__":
    main()
