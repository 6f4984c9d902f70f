"""Small asyncio helpers every service loop needs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


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


def resolve(futures: Iterable[tuple[asyncio.Future[T], T | BaseException]]) -> None:
    """Hand each waiting caller of a batch its own outcome: an exception is raised to it, anything
    else is its result; a caller that gave up already is skipped."""
    for future, outcome in futures:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
