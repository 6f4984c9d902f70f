"""`python -m gateway`: serve the gateway on NURTURE_HTTP_PORT with settings from NURTURE_*."""

from __future__ import annotations

import logging

import uvicorn

from gateway.app import create_app
from nurture import telemetry
from nurture.listen import PortInUse, listening_socket
from nurture.service import tune_for_latency
from nurture.settings import SettingsError, load_settings


def main() -> None:
    try:
        settings = load_settings()
    except SettingsError as exc:  # e.g. beyond loopback without its secrets: say which, no traceback
        raise SystemExit(f"gateway: cannot start: {exc}") from None
    logging.basicConfig(level=settings.log_level, format="%(asctime)s gateway %(levelname)s %(name)s: %(message)s")
    provider = telemetry.setup("gateway", settings)
    app = create_app(settings)
    tune_for_latency()
    try:
        # A port in use is tried again for a few seconds (nurture.listen), then named.
        sock = listening_socket("gateway", settings.bind_host, settings.http_port)
        config = uvicorn.Config(app, log_level="warning", loop="asyncio", http="httptools", access_log=False,
                                # Longer than the idle timeout of the clients and load balancers in front
                                # (60 s is common): a server closing first races a request sent on the idle
                                # connection, which the client sees as a reset (uvicorn's default is 5 s).
                                timeout_keep_alive=75)
        uvicorn.Server(config).run(sockets=[sock])
    except PortInUse as exc:
        raise SystemExit(str(exc)) from None
    finally:
        provider.shutdown()


if __name__ == "__main__":  # (not when a multiprocessing child imports the main module again)
    main()
