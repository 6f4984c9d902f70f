"""The change stream: the feed of lead changes the bus consumer records, read by Watch."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

from nurture.aio import wait_event
from services.crm_sync import storage as st
from services.crm_sync.app.base import CoreBase


class ChangeStream(CoreBase):
    _change_waiters: set[asyncio.Event]

    async def watch(self, cursor: int, follow: bool, limit: int) -> AsyncIterator[st.Change]:
        sent = 0
        wake = asyncio.Event()
        self._change_waiters.add(wake)
        try:
            while True:
                wake.clear()
                rows = await self.read(functools.partial(st.changes_after, seq=cursor, limit=500))
                for row in rows:
                    yield row
                    cursor = row.seq
                    sent += 1
                    if limit and sent >= limit:
                        return
                if rows:
                    continue
                if not follow:
                    return
                # Woken by this process's bus consumer; the timeout covers other replicas.
                await wait_event(wake, 1.0)
        finally:
            self._change_waiters.discard(wake)

    def _notify_changes(self) -> None:
        for waiter in self._change_waiters:
            waiter.set()
