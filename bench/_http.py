"""A lean HTTP/1.1 keep-alive client for load generation.

httpx spends about 3.5 ms of CPU per request (measured with `time.process_time` around 3,000 posts):
on a 2-core machine the load generator would take more CPU than the gateway it measures. This one
writes a request and reads a Content-Length response on a pooled connection, and nothing else.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlparse


class LeanClient:
    def __init__(self, base_url: str, headers: dict[str, str], connections: int = 64) -> None:
        url = urlparse(base_url)
        self._host, self._port = url.hostname or "127.0.0.1", url.port or 80
        self._head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{self._host}:{self._port}", **headers}.items())
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(connections)

    async def post(self, path: str, body: Any) -> tuple[int, bytes]:
        """POST `body` as JSON; the status and the response body."""
        data = json.dumps(body).encode()
        request = (f"POST {path} HTTP/1.1\r\n{self._head}Content-Type: application/json\r\n"
                   f"Content-Length: {len(data)}\r\n\r\n").encode() + data
        async with self._slots:
            reader, writer = self._idle.pop() if self._idle else await asyncio.open_connection(self._host, self._port)
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split()[1])
                length = next(int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                              if k.lower() == "content-length")
                payload = await reader.readexactly(length)
            except BaseException:
                writer.close()
                raise
            self._idle.append((reader, writer))
            return status, payload

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def paced(count: int, rate: float, one: Callable[[int, float], Coroutine[Any, Any, None]]) -> None:
    """Call `one(n, due)` for n in 0..count-1 at `rate` per second, each at its due time (a
    `time.perf_counter()` value), without waiting for earlier calls: a steady site's load, whose
    latencies a slow answer cannot hide (measured from `due`, a late start counts against the server).

    The generator's own pauses would count against the server too (a post due during one starts late,
    an answer that arrives during one is read late), and its garbage collector made the longest: a full
    collection scans every object the process holds, and holding every finished post's task (60,000 in
    a minute at 1,000/s) on top of the modules and the run's set-up took it to 60-140 ms of CPU by the
    end of a 20 s run (docs/CAPACITY.md, "Where the accept p99 went"). So only the posts still running
    are held, and what the process built before the first post is frozen out of its collections (the
    collector still runs, on what the run itself makes)."""
    running: set[asyncio.Task[None]] = set()
    errors: list[BaseException] = []

    def finished(task: asyncio.Task[None]) -> None:
        running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            errors.append(task.exception())  # type: ignore[arg-type]

    gc.collect()
    gc.freeze()
    try:
        t0 = time.perf_counter()
        for n in range(count):
            due = t0 + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(n, due))
            running.add(task)
            task.add_done_callback(finished)
        await asyncio.gather(*running, return_exceptions=True)  # `finished` keeps what they raised
    finally:
        gc.unfreeze()
    if errors:  # as gathering every task would have: the first post that raised
        raise errors[0]
