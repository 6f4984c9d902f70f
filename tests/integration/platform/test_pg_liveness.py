"""Pooled PostgreSQL connections: a dead one is never handed out, and a live one costs no ping."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from nurture.db import check_liveness_on_checkout, make_engine
from tests.conftest import PG_URL

pytestmark = pytest.mark.skipif(not PG_URL, reason="PostgreSQL only (NURTURE_TEST_DATABASE_URL)")


@pytest.fixture
def engine() -> Iterator[sa.Engine]:
    assert PG_URL
    engine = make_engine(PG_URL, service="liveness-test")
    yield engine
    engine.dispose()


def _pings(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_conn: Any) -> bool:
        pings.append(1)
        return ping(dbapi_conn)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


def _backend(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_the_server_ended_is_replaced_before_use(engine: sa.Engine) -> None:
    first = _backend(engine)
    assert PG_URL
    admin = sa.create_engine(PG_URL, poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        # With a timeout, it returns once the backend is gone (its goodbye is on the pooled socket).
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": first}).scalar_one()
    admin.dispose()
    for _ in range(3):  # no error: the pool hands out a new connection
        assert _backend(engine) != first


def test_a_recently_used_connection_is_not_pinged(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    pings = _pings(engine, monkeypatch)
    for _ in range(20):
        _backend(engine)
    assert pings == []


def test_a_long_idle_connection_is_pinged(monkeypatch: pytest.MonkeyPatch) -> None:
    assert PG_URL
    engine = sa.create_engine(PG_URL, pool_size=2)
    check_liveness_on_checkout(engine, idle_ping_s=0.0)
    try:
        pings = _pings(engine, monkeypatch)
        _backend(engine)  # a fresh connection: nothing to check
        _backend(engine)
        assert pings == [1]
    finally:
        engine.dispose()
