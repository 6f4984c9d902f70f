"""crm_sync's group commit: concurrent writes share one SQL transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

from sqlalchemy.orm import Session

from nurture.batching import Batcher
from nurture.db import Database, retry_reason

log = logging.getLogger(__name__)
T = TypeVar("T")


class GroupWriter:
    """Group commit: writes submitted while one transaction runs go together into the next, so many
    concurrent inbound calls cost a few SQL commits instead of one each."""

    def __init__(self, db: Database, max_batch: int = 500) -> None:
        self._db = db
        self._batches: Batcher[Callable[[Session], Any], Any] = Batcher(self._run, max_batch=max_batch, parallel=1)

    async def submit(self, fn: Callable[[Session], T]) -> T:
        return cast(T, await self._batches.submit(fn))

    def _commit(self, batch: list[Callable[[Session], Any]]) -> list[tuple[bool, Any]]:
        try:
            with self._db.session() as s:
                return [(True, fn(s)) for fn in batch]
        except Exception as exc:
            if retry_reason(exc) is not None:
                raise  # a lost race: Database.run runs the whole group again
            log.debug("group commit failed; committing one by one", exc_info=True)
        out: list[tuple[bool, Any]] = []
        for fn in batch:
            try:
                with self._db.session() as s:
                    out.append((True, fn(s)))
            except Exception as exc:
                out.append((False, exc))
        return out

    async def _run(self, batch: list[Callable[[Session], Any]]) -> list[Any]:
        # An exception in the list is raised to its caller (nurture.aio.resolve); if the executor
        # itself fails, Batcher hands that error to every caller of the batch.
        return [value for _ok, value in await self._db.run(self._commit, batch)]
