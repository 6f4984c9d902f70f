"""Small asyncio helpers every service loop needs."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for `event` at most `timeout` seconds; True when it was set.

    Not `asyncio.wait_for`: on Python 3.11 it can swallow a cancellation that races with the
    timeout, leaving a service loop running after shutdown (seen here as a hung test teardown).
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False
