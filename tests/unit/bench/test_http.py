"""bench/_http.py's pacing: the load generator must not make pauses of its own that the latencies it
measures would charge to the server (its garbage collector scanning every finished post)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from bench._http import paced


def test_a_finished_post_is_not_held_while_the_run_goes_on() -> None:
    finished: list[weakref.ref[asyncio.Task[None]]] = []
    alive_later: list[bool] = []

    async def one(n: int, _due: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        if n < 5:
            finished.append(weakref.ref(task))
        if n == 50:  # long after the first five finished: were their tasks dropped?
            await asyncio.sleep(0.05)  # a loaded host may have started all 51 together: let them end
            gc.collect()
            alive_later.extend(ref() is not None for ref in finished)

    asyncio.run(paced(60, 2000, one))
    assert alive_later == [False] * 5


def test_the_set_up_is_frozen_out_of_the_generators_collections_during_the_run_only() -> None:
    frozen_during: list[int] = []

    async def one(_n: int, _due: float) -> None:
        frozen_during.append(gc.get_freeze_count())

    asyncio.run(paced(3, 1000, one))
    assert min(frozen_during) > 1000  # the modules and the run's set-up
    assert gc.get_freeze_count() == 0


def test_a_post_that_raises_fails_the_run_after_the_others_finish() -> None:
    done: list[int] = []

    async def one(n: int, _due: float) -> None:
        if n == 2:
            raise ValueError("post 2")
        await asyncio.sleep(0.01)
        done.append(n)

    with pytest.raises(ValueError, match="post 2"):
        asyncio.run(paced(6, 1000, one))
    assert sorted(done) == [0, 1, 3, 4, 5]
