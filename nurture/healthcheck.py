"""`python -m nurture.healthcheck HOST:PORT`: exit 0 when the gRPC server there is SERVING
(the container health check; grpc_health_probe does the same but is another binary to ship)."""

from __future__ import annotations

import asyncio
import sys

from nurture.rpc import health_status


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m nurture.healthcheck HOST:PORT", file=sys.stderr)
        return 2
    status = asyncio.run(health_status(argv[0], timeout=2.0))
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
