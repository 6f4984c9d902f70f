"""nurture.aio.wait_while: what crm_sync's push loop waits with while the bus is behind; it waits while
the condition holds, never past its bound, and not at all when the condition does not hold."""

from __future__ import annotations

import time

import pytest

from nurture.aio import wait_while

pytestmark = pytest.mark.anyio


async def test_it_does_not_wait_when_the_condition_does_not_hold() -> None:
    assert await wait_while(lambda: False, 5.0) < 0.01


async def test_it_waits_until_the_condition_ends() -> None:
    until = time.monotonic() + 0.15
    waited = await wait_while(lambda: time.monotonic() < until, 5.0, step=0.01)
    assert 0.15 <= waited < 1.0


async def test_it_waits_no_longer_than_its_bound() -> None:
    waited = await wait_while(lambda: True, 0.2, step=0.05)
    assert 0.2 <= waited < 0.5
