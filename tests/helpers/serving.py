"""An ASGI app (the gateway) served by uvicorn on a real port, for the tests whose client is a browser
or a fuzzer that needs one. Lifespan off: the app's channels are the test's signed ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from nurture.ports import free_port


async def serve(app: Any, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """The app listening on `port` (returns once it is); stop it with `server.should_exit = True` and
    an await of the task."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off", access_log=False))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    return server, task


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """The app on a free port, its base URL while the block runs."""
    port = free_port()
    server, task = await serve(app, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
