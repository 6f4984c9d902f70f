"""Batching of concurrent callers' items into one handler call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from nurture.aio import resolve

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class Batcher(Generic[ItemT, ResultT]):
    """Items submitted by concurrent callers are handled in batches: while `parallel` batches are
    being handled, new items wait and go together into the next one (no timer: an idle service
    handles a lone item at once)."""

    def __init__(self, handle: Callable[[list[ItemT]], Awaitable[list[ResultT | BaseException]]], *, max_batch: int,
                 parallel: int) -> None:
        self._handle = handle
        self._max = max_batch
        self._parallel = parallel
        self._queue: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, item: ItemT) -> ResultT:
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self._queue and len(self._running) < self._parallel:
            taken, self._queue = self._queue[: self._max], self._queue[self._max:]
            task = asyncio.create_task(self._run(taken))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._start()

    async def _run(self, taken: list[tuple[ItemT, asyncio.Future[ResultT]]]) -> None:
        try:
            results = await self._handle([item for item, _ in taken])
        except BaseException as exc:  # the batch as a whole failed: every caller hears why
            results = [exc] * len(taken)
            if isinstance(exc, asyncio.CancelledError):
                for _, future in taken:
                    future.cancel()
                raise
        resolve((future, res) for (_, future), res in zip(taken, results, strict=True))
