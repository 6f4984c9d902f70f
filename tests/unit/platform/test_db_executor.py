"""The database executor: urgent work overtakes queued background work, and nothing is lost."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nurture.db import Database, make_engine


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(make_engine(f"sqlite:///{tmp_path / 'x.db'}"), service="x")
    yield database
    database.close()


def test_urgent_work_runs_before_background_work_queued_earlier(db: Database) -> None:
    order: list[str] = []
    gate = threading.Event()

    async def scenario() -> None:
        busy = asyncio.ensure_future(db.run(gate.wait))  # the one SQLite thread is taken
        await asyncio.sleep(0.05)
        background = [asyncio.ensure_future(db.run(order.append, f"background-{i}")) for i in range(3)]
        urgent = asyncio.ensure_future(db.run(order.append, "urgent", urgent=True))
        later = asyncio.ensure_future(db.run(order.append, "urgent-2", urgent=True))
        await asyncio.sleep(0.05)
        assert order == [], "nothing may run while the thread is busy"
        gate.set()
        await asyncio.gather(busy, *background, urgent, later)

    asyncio.run(scenario())
    assert order == ["urgent", "urgent-2", "background-0", "background-1", "background-2"]


def test_errors_reach_the_caller_and_the_thread_keeps_working(db: Database) -> None:
    def fail() -> None:
        raise ValueError("boom")

    async def scenario() -> int:
        with pytest.raises(ValueError, match="boom"):
            await db.run(fail, urgent=True)
        return await db.run(lambda: 41 + 1)

    assert asyncio.run(scenario()) == 42


def test_a_cancelled_call_that_has_not_started_never_runs(db: Database) -> None:
    ran: list[str] = []
    gate = threading.Event()

    async def scenario() -> None:
        busy = asyncio.ensure_future(db.run(gate.wait))
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(db.run(ran.append, "doomed"))
        await asyncio.sleep(0.01)
        doomed.cancel()
        await asyncio.sleep(0.01)  # the cancellation reaches the executor's future on the loop's next turn
        gate.set()
        await busy
        await db.run(ran.append, "after")

    asyncio.run(scenario())
    assert ran == ["after"]


def test_close_finishes_queued_work_then_refuses_more(tmp_path: Path) -> None:
    database = Database(make_engine(f"sqlite:///{tmp_path / 'y.db'}"), service="y")
    done: list[int] = []
    gate = threading.Event()

    async def submit() -> list[asyncio.Future[None]]:
        futures = [asyncio.ensure_future(database.run(gate.wait))]
        futures += [asyncio.ensure_future(database.run(done.append, i)) for i in range(5)]
        await asyncio.sleep(0.05)
        return futures

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(submit())
        closer = threading.Thread(target=database.close)
        closer.start()
        gate.set()
        closer.join(5)
        assert not closer.is_alive()
        assert done == [0, 1, 2, 3, 4]
        with pytest.raises(RuntimeError, match="closed"):
            loop.run_until_complete(database.run(done.append, 9))
    finally:
        loop.close()


def test_a_read_does_not_wait_for_the_writer_and_sees_the_last_commit(db: Database) -> None:
    """`Database.read` runs on reader threads: while the one SQLite writer thread holds a write transaction
    open (a consumer's batch), a read answers from the last commit instead of queueing behind it."""
    from sqlalchemy import text

    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    gate, writing = threading.Event(), threading.Event()

    def write() -> None:
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (2)"))
            writing.set()
            gate.wait(30)

    def count() -> int:
        with db.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM t")).scalar_one())

    async def scenario() -> tuple[int, int]:
        busy = asyncio.ensure_future(db.run(write))
        queued = asyncio.ensure_future(db.run(count))  # behind the write on the writer thread
        while not writing.is_set():
            await asyncio.sleep(0.01)
        during = await asyncio.wait_for(db.read(count), 20)  # the write is still open: it waited for nothing
        assert not busy.done() and not queued.done()
        gate.set()
        await busy
        assert await queued == 2
        return during, await db.read(count)

    assert asyncio.run(scenario()) == (1, 2)
