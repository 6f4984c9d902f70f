"""crm_sync's group commit: concurrent writes share one SQL transaction."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from nurture.db import Database

log = logging.getLogger(__name__)
T = TypeVar("T")


class GroupWriter:
    """Group commit: writes submitted while one transaction runs go together into the next, so many
    concurrent inbound calls cost a few SQL commits instead of one each."""

    def __init__(self, db: Database, max_batch: int = 500) -> None:
        self._db = db
        self._queue: list[tuple[Callable[[Session], Any], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._max = max_batch

    async def submit(self, fn: Callable[[Session], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, future))
        self._wake.set()
        return await future

    def _commit(self, batch: list[Callable[[Session], Any]]) -> list[tuple[bool, Any]]:
        try:
            with self._db.session() as s:
                return [(True, fn(s)) for fn in batch]
        except Exception:
            log.debug("group commit failed; committing one by one", exc_info=True)
        out: list[tuple[bool, Any]] = []
        for fn in batch:
            try:
                with self._db.session() as s:
                    out.append((True, fn(s)))
            except Exception as exc:
                out.append((False, exc))
        return out

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                taken, self._queue = self._queue[: self._max], self._queue[self._max:]
                try:
                    results = await self._db.run(self._commit, [fn for fn, _ in taken])
                except Exception as exc:  # the executor itself failed: fail every caller
                    results = [(False, exc)] * len(taken)
                for (_, future), (ok, value) in zip(taken, results, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
