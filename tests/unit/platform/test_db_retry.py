"""Transactions that lose a race run again, boundedly, and what crosses a process stays short."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from nurture import db as dbmod
from nurture.db import ContentionError, Database, RetryTransaction, make_engine, retry_reason
from nurture.errors import MAX_STATUS_MESSAGE
from nurture.rpc import unexpected_error


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"pg error {sqlstate}")
        self.sqlstate = sqlstate


def _wrapped(sqlstate: str) -> OperationalError:
    return OperationalError("UPDATE scoring_leads SET ...", {}, _PgError(sqlstate))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(make_engine(f"sqlite:///{tmp_path / 'r.db'}"), service="r")
    yield database
    database.close()


@pytest.mark.parametrize(("exc", "reason"), [
    (_wrapped("40P01"), "deadlock"),
    (_wrapped("40001"), "serialization_failure"),
    (IntegrityError("INSERT ...", {}, _PgError("23505")), "unique_violation"),
    (_PgError("40P01"), "deadlock"),  # raised on a raw cursor (DriverWrites), not wrapped
    (sqlite3.IntegrityError("UNIQUE constraint failed: t.k"), "unique_violation"),
    (OperationalError("x", {}, sqlite3.OperationalError("database is locked")), "sqlite_busy"),
    (RetryTransaction(), "requested"),
])
def test_races_are_retryable(exc: Exception, reason: str) -> None:
    assert retry_reason(exc) == reason


@pytest.mark.parametrize("exc", [
    _wrapped("23502"),  # not_null_violation: a bug, not a race
    IntegrityError("x", {}, _PgError("23503")),  # foreign key
    ProgrammingError("x", {}, _PgError("42P01")),
    sqlite3.IntegrityError("NOT NULL constraint failed: t.k"),
    ValueError("bad input"),
    _wrapped("55P03"),  # lock_timeout: reported at once, not retried
])
def test_other_errors_are_not_retried(exc: Exception) -> None:
    assert retry_reason(exc) is None


def test_a_lost_race_runs_again_and_is_counted(db: Database) -> None:
    calls: list[int] = []

    def transaction() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _wrapped("40P01")
        return "done"

    assert asyncio.run(db.run(transaction)) == "done"
    assert len(calls) == 3
    assert db.counters == {"db.retries.deadlock": 2}


def test_retries_are_bounded_and_end_in_a_short_contention_error(db: Database) -> None:
    calls: list[int] = []

    def transaction() -> None:
        calls.append(1)
        raise _wrapped("40001")

    with pytest.raises(ContentionError) as info:
        asyncio.run(db.run(transaction))
    assert len(calls) == dbmod.MAX_ATTEMPTS
    assert "UPDATE" not in str(info.value) and "serialization_failure" in str(info.value)
    assert db.counters["db.retries.serialization_failure"] == dbmod.MAX_ATTEMPTS - 1
    assert db.counters["db.retries_exhausted.serialization_failure"] == 1


def test_a_bug_is_raised_at_once(db: Database) -> None:
    calls: list[int] = []

    def transaction() -> None:
        calls.append(1)
        raise _wrapped("23502")

    with pytest.raises(OperationalError):
        asyncio.run(db.run(transaction))
    assert len(calls) == 1 and not db.counters


def test_a_lock_timeout_is_contention_without_retry(db: Database) -> None:
    calls: list[int] = []

    def transaction() -> None:
        calls.append(1)
        raise _wrapped("55P03")

    with pytest.raises(ContentionError):
        asyncio.run(db.run(transaction))
    assert len(calls) == 1 and db.counters == {"db.timeouts.lock_timeout": 1}


def test_unexpected_errors_cross_grpc_short_with_a_code() -> None:
    sql = "SELECT " + ", ".join(f"column_{i}" for i in range(3000)) + " FROM scoring_leads FOR UPDATE"
    error = unexpected_error(OperationalError(sql, {"ids": list(range(1000))}, _PgError("XX000")))
    code, details = error.grpc_status, error.status_details()
    body = json.loads(details)
    assert code == grpc.StatusCode.INTERNAL and body["code"] == "internal"
    assert len(details) < MAX_STATUS_MESSAGE + 200 and "column_" not in details and "SELECT" not in details

    error = unexpected_error(ContentionError("storage contention (deadlock); retry the request"))
    code, details = error.grpc_status, error.status_details()
    assert code == grpc.StatusCode.UNAVAILABLE and json.loads(details)["code"] == "unavailable"


def test_a_method_a_service_does_not_implement_still_answers_unimplemented() -> None:
    """The interceptor that shortens unexpected errors leaves a status the servicer set alone."""
    from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
    from nurture.rpc import channel, start_server

    async def scenario() -> None:
        class Partial(scoring_pb2_grpc.ScoringServicer):
            pass  # every method: grpc's base class sets UNIMPLEMENTED and raises NotImplementedError

        def register(server: grpc.aio.Server) -> list[str]:
            scoring_pb2_grpc.add_ScoringServicer_to_server(Partial(), server)
            return [scoring_pb2.DESCRIPTOR.services_by_name["Scoring"].full_name]

        server = await start_server(name="partial", port=0, register=register, mesh_tokens=["unit-mesh-token"])
        try:
            async with channel(f"127.0.0.1:{server.port}", "unit-mesh-token") as ch:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await scoring_pb2_grpc.ScoringStub(ch).GetLead(scoring_pb2.GetLeadRequest(id="x"), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            await server.stop(0)

    asyncio.run(scenario())
