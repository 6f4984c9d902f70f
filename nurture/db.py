"""SQL access: one engine per service, Alembic migrations per service, blocking work off the loop.

SQLite is the embedded default (one WAL file per service, so services never contend for one writer
lock); PostgreSQL is the production engine. Each service owns its tables and its migration history
(`alembic_version_<service>`), so services can share one PostgreSQL database without sharing schema.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import itertools
import logging
import queue
import random
import select
import sqlite3
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Boolean,
    Connection,
    Date,
    Engine,
    Float,
    Table,
    create_engine,
    event,
    make_url,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from nurture.settings import Settings
from nurture.telemetry import instrument_engine, record_statement

T = TypeVar("T")
log = logging.getLogger(__name__)

# PostgreSQL's SQLSTATEs that mean "this transaction lost a race; run it again": deadlock_detected,
# serialization_failure, and unique_violation (two transactions inserting the same new key, e.g. one
# idempotency key or one new lead id: the retry sees the committed row and takes the other path).
# PostgreSQL's manual (13.4, "Serialization Failure Handling") asks applications to retry these.
_RETRYABLE_SQLSTATES = {"40P01": "deadlock", "40001": "serialization_failure", "23505": "unique_violation"}
# Waits that ran out (lock_timeout, statement_timeout): retrying would only wait again past the
# caller's deadline, so they are reported as contention at once.
_TIMEOUT_SQLSTATES = {"55P03": "lock_timeout", "57014": "statement_timeout"}
MAX_ATTEMPTS = 5


class RetryTransaction(Exception):
    """Raised by storage code to ask for its transaction to run again (a race it can detect itself)."""


class ContentionError(Exception):
    """A transaction kept losing races after every retry: transient, the caller may retry later.
    Carries a short message; the database's own text (SQL, parameters) stays in the log."""


def retry_reason(exc: BaseException) -> str | None:
    """Why `exc` is worth a retry of the whole transaction, or None when it is not."""
    if isinstance(exc, RetryTransaction):
        return "requested"
    sqlstate = _sqlstate(exc)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return _RETRYABLE_SQLSTATES[sqlstate]
    driver = exc.orig if isinstance(exc, DBAPIError) else exc
    if type(driver).__name__ == "OperationalError" and "database is locked" in str(driver):  # SQLite busy
        return "sqlite_busy"
    if type(driver).__name__ == "IntegrityError" and "UNIQUE constraint failed" in str(driver):
        return "unique_violation"  # SQLite's form (two processes on one file race the same way)
    return None


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error, raised through SQLAlchemy or on a raw cursor (DriverWrites)."""
    driver = exc.orig if isinstance(exc, DBAPIError) else exc
    value = getattr(driver, "sqlstate", None) or getattr(driver, "pgcode", None)
    return str(value) if isinstance(value, str) and value else None


class Database:
    """An engine, a session factory, and an executor that keeps blocking SQL off the event loop."""

    def __init__(self, engine: Engine, *, service: str) -> None:
        self.engine = engine
        self.service = service
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        # SQLite allows one writer: one thread serialises writes without lock errors.
        self._executor = _UrgentFirstExecutor(workers=1 if self.is_sqlite else POSTGRES_WORKERS, name=f"{service}-sql")
        # Transactions run again after a lost race, by reason, and those that lost every attempt:
        # served as counters by the Admin service's Stats (`db.retries.deadlock`, ...).
        self.counters: Counter[str] = Counter()
        self._readers: ThreadPoolExecutor | None = None  # `read`'s threads, made on first use
        self._checkpointer: _Checkpointer | None = None
        path = engine.url.database if self.is_sqlite else None
        if path and path != ":memory:" and not path.startswith("file:"):
            # Its commits no longer checkpoint: the connections opened from now on say so, and the ones the
            # pool holds (migrations') are closed, so none is left to do it at the old threshold.
            event.listen(engine, "connect", _no_autocheckpoint)
            engine.dispose()
            self._checkpointer = _Checkpointer(path, self._catch_up, name=f"{service}-checkpoint")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on any exception."""
        with self._sessions() as session, session.begin():
            yield session

    async def run(self, fn: Callable[..., T], *args: Any, urgent: bool = False, **kwargs: Any) -> T:
        """Run blocking storage code in the database executor, in the caller's context (so SQL spans
        join the caller's trace). `urgent` work (a request someone waits on at a latency target, such
        as accepting events) starts before any queued background work (sweeps, consumers' writes).

        `fn` is one or more whole transactions with no effect outside the database, so a transaction
        that lost a race (deadlock, serialization failure, a concurrent insert of the same key) runs
        again, up to MAX_ATTEMPTS times with jittered backoff; after the last it raises
        ContentionError, whose message is short (the driver's, with SQL, goes to the log)."""
        call = functools.partial(fn, *args, **kwargs)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            ctx = contextvars.copy_context()
            try:
                return await asyncio.wrap_future(self._executor.submit(urgent, ctx.run, call))
            except Exception as exc:  # the driver's own errors too: DriverWrites runs on raw cursors
                reason = retry_reason(exc)
                if reason is None:
                    timeout = _sqlstate(exc)
                    if timeout in _TIMEOUT_SQLSTATES:
                        self.counters[f"db.timeouts.{_TIMEOUT_SQLSTATES[timeout]}"] += 1
                        log.warning("%s: %s: %s", self.service, _TIMEOUT_SQLSTATES[timeout], exc)
                        raise ContentionError(f"storage busy ({_TIMEOUT_SQLSTATES[timeout]}); retry the request") \
                            from exc
                    raise
                if attempt == MAX_ATTEMPTS:
                    self.counters[f"db.retries_exhausted.{reason}"] += 1
                    log.warning("%s: a transaction lost %d races (%s), giving up: %s", self.service, attempt,
                                reason, exc)
                    raise ContentionError(f"storage contention ({reason}); retry the request") from exc
                self.counters[f"db.retries.{reason}"] += 1
                log.info("%s: transaction retried after a %s (attempt %d)", self.service, reason, attempt)
                # Full jitter, growing with the attempt: racers must not meet again in lockstep.
                await asyncio.sleep(random.uniform(0, 0.005 * 2 ** attempt))
        raise AssertionError("unreachable")

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run read-only storage code (its own session or connection; it must not write) on reader
        threads of their own, in the caller's context: it never queues behind the work waiting for the
        executor (on SQLite its one writer thread, busy with a whole bus batch at a time), and SQLite's
        WAL lets it read the last commit while a write runs. For reads another service waits on (crm_sync
        asks journeys for the journeys of each bus batch's leads) and request paths' lookups."""
        if self._readers is None:
            self._readers = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix=f"{self.service}-read")
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._readers, functools.partial(ctx.run, fn, *args))

    def _catch_up(self) -> Future[None]:
        """Checkpoint what the WAL still holds on the writer thread, behind any urgent work: no write runs
        meanwhile, so it finishes, and the next write starts the WAL over (see `_Checkpointer`)."""
        def checkpoint() -> None:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        return self._executor.submit(False, checkpoint)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self._executor.shutdown()
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        self.engine.dispose()


class _UrgentFirstExecutor:
    """Worker threads taking urgent work before the rest, each class in submission order.

    SQLite has one writer thread, so a burst of background writes (a CRM sync writing back 30
    leads, one transaction each) used to queue ahead of the next ingest and stall accepted events
    for 70 ms; now ingest waits at most for the one transaction already running."""

    def __init__(self, *, workers: int, name: str) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Callable[[], Any] | None, Future[Any] | None]] = (
            queue.PriorityQueue())
        self._order = itertools.count()
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(workers)]
        self._closed = False
        for thread in self._threads:
            thread.start()

    def submit(self, urgent: bool, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self._closed:
            raise RuntimeError("the database is closed")
        future: Future[T] = Future()
        self._queue.put((0 if urgent else 1, next(self._order), functools.partial(fn, *args), future))
        return future

    def _work(self) -> None:
        while True:
            _, _, call, future = self._queue.get()
            if call is None or future is None:  # shutdown: queued work before it has run
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as exc:  # handed to the awaiting coroutine, as an executor does
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self) -> None:
        """Finish what was submitted, then stop the threads."""
        self._closed = True
        for _ in self._threads:
            self._queue.put((2, next(self._order), None, None))
        for thread in self._threads:
            thread.join()


def _no_autocheckpoint(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")


class _Checkpointer:
    """SQLite's WAL checkpoints, moved off the commits. By default the commit that takes the WAL past 1,000
    pages checkpoints before it returns: it copies the pages into the database file and waits for two
    fsyncs (the WAL's, then the file's), 10-40 ms on the shared host, and everything queued behind the
    one writer thread waits with it (scoring's ingest at 1,000 posts/s: docs/CAPACITY.md, "Where the
    accept p99 went"). A thread of its own now does that copying and syncing every INTERVAL_S, PASSIVE (it
    never blocks a writer nor waits for one). But a write starts the WAL over only when no page is left
    to copy as it begins, and under steady writes one always lands while a round copies: the WAL would
    grow for as long as they go on. So once it holds more than RESTART_PAGES, a checkpoint runs on the
    writer thread itself (`catch_up`, queued behind urgent work): no write runs meanwhile, the rounds
    have copied and synced nearly everything, so it is short, and the next write starts the WAL over.
    Durability is unchanged: with `synchronous=NORMAL` a commit never waited for an fsync; a checkpoint
    syncs the WAL before it copies."""

    INTERVAL_S = 0.25
    RESTART_PAGES = 8000  # 32 MiB of 4 KiB pages: a catch-up every few seconds under load

    def __init__(self, path: str, catch_up: Callable[[], Future[None]], *, name: str) -> None:
        self._path = path
        self._catch_up = catch_up
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        conn = sqlite3.connect(self._path, timeout=30, check_same_thread=False)
        queued: Future[None] | None = None  # the catch-up asked for last
        try:
            while not self._stop.wait(self.INTERVAL_S):
                try:
                    # fetchall: the statement runs to its end and is reset, holding nothing between rounds.
                    [(_busy, frames, _copied)] = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    if frames > self.RESTART_PAGES and (queued is None or queued.done()):
                        queued = self._catch_up()
                except (sqlite3.Error, RuntimeError) as exc:  # a locked or closing database: next round
                    log.debug("checkpoint of %s skipped: %s", self._path, exc)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# Worker threads (and so concurrent transactions) per service on PostgreSQL; the pool holds one
# connection per worker plus the event loop's own occasional reads.
POSTGRES_WORKERS = 8
READERS = 4  # `Database.read`'s threads (connections beyond the executor's: the pool's overflow)
# A statement that waits this long for a lock or runs this long is stopped (its transaction fails
# and is retried or reported) rather than holding connections and locks indefinitely.
STATEMENT_TIMEOUT_MS = 30_000
LOCK_TIMEOUT_MS = 10_000
# SQLite's page cache per connection (KiB; allocated only as pages are read). Its default, 2 MiB, holds
# less than one report's pages of a full-scale read model (the won deals, their leads' touches), so every
# call copied its pages again from the OS cache: at 64 MiB the heaviest analytics reports spent 20-30 %
# less CPU (bench/analytics.py, roi and attribution at 100,000 leads, 2,000,000 events).
SQLITE_CACHE_KIB = 65_536


def make_engine(url: str, *, service: str = "nurture") -> Engine:
    """An engine with the settings each dialect needs for safe concurrent use."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL + NORMAL survives a killed process (only a power cut can lose the last commits).
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")  # negative: KiB, not pages
            cur.close()

        return engine
    # application_name lets an operator tell which service holds a lock (pg_stat_activity, pg_locks).
    # Options already in the URL (e.g. a search_path) are kept: connect_args would replace them.
    given = make_url(url).query.get("options", "")
    given = " ".join(given) if isinstance(given, tuple) else given
    connect_args = {"application_name": f"nurture-{service}"[:63],
                    "options": f"{given} -c statement_timeout={STATEMENT_TIMEOUT_MS} "
                               f"-c lock_timeout={LOCK_TIMEOUT_MS}".strip()}
    engine = create_engine(url, pool_size=POSTGRES_WORKERS + 2, max_overflow=4, connect_args=connect_args)
    check_liveness_on_checkout(engine)
    return engine


# A pooled connection unused for this long is pinged (a round trip) before it is handed out again.
IDLE_PING_S = 30.0


def check_liveness_on_checkout(engine: Engine, *, idle_ping_s: float = IDLE_PING_S) -> None:
    """Hand out only live connections, without a round trip per checkout.

    SQLAlchemy's `pool_pre_ping` pings on every checkout: on PostgreSQL one more round trip per
    transaction, which cost the busy services as much client CPU as a small transaction's own
    statements. A connection the server ended (a restart, `pg_terminate_backend`, an idle timeout)
    has something to read on an idle socket (the server's goodbye, then end of file), so a zero-wait
    poll of the socket finds it for free; one silent for `idle_ping_s` (a peer that vanished without
    a word) is pinged as before. A dead one is replaced before use (DisconnectionError: the pool
    retries the checkout with a new connection)."""

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["nurture_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("nurture_idle_since", None)
        if since is None:  # a fresh connection
            return
        try:
            readable, _, _ = select.select([dbapi_conn.fileno()], [], [], 0)
        except (OSError, ValueError) as exc:  # the socket is gone already
            raise DisconnectionError("connection closed while idle") from exc
        if readable or getattr(dbapi_conn, "closed", False) or getattr(dbapi_conn, "broken", False):
            raise DisconnectionError("the server ended this connection while it was idle")
        if time.monotonic() - since >= idle_ping_s:
            try:
                engine.dialect.do_ping(dbapi_conn)
            except Exception as exc:  # the driver's own error, whatever went wrong on the wire
                raise DisconnectionError("an idle connection did not answer a ping") from exc


class SchemaMismatch(RuntimeError):
    """The database's schema is not the one this code was written for: the process must not serve."""


def _alembic_config(service: str, migrations_dir: Path) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.attributes["version_table"] = f"alembic_version_{service}"
    return config


MIGRATION_LOCK_TIMEOUT_MS = 600_000  # how long a replica waits for another's migration before it gives up


def _lock_key(service: str) -> int:
    """The PostgreSQL advisory lock of one service's migrations (a signed 64-bit key, stable across runs)."""
    return int.from_bytes(hashlib.sha256(f"nurture-migrate:{service}".encode()).digest()[:8], "big", signed=True)


def migrate(engine: Engine, *, service: str, migrations_dir: Path) -> str:
    """Bring the service's tables to the newest revision (Alembic `upgrade head`); returns the revision.

    Replicas starting together each call this: on PostgreSQL the upgrade runs under a transaction-level
    advisory lock, so one replica migrates and the others, once it commits, find the schema at head
    and do nothing (without it, two would both see an empty version table and race to CREATE TABLE)."""
    config = _alembic_config(service, migrations_dir)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # The service's statement and lock timeouts are for serving: building an index on a large
            # table, or waiting for another replica's migration, takes longer.
            connection.execute(text("SET LOCAL statement_timeout = 0"))
            connection.execute(text(f"SET LOCAL lock_timeout = {MIGRATION_LOCK_TIMEOUT_MS}"))
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(service)})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return check_schema(engine, service=service, migrations_dir=migrations_dir)


def check_schema(engine: Engine, *, service: str, migrations_dir: Path) -> str:
    """The database's revision when it is the code's newest; SchemaMismatch saying what to do otherwise."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(service, migrations_dir))
    head = script.get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(
            connection, opts={"version_table": f"alembic_version_{service}"}).get_current_revision()
    if current == head and head is not None:
        return head
    known = {r.revision for r in script.walk_revisions()}
    if current is None or current in known:
        raise SchemaMismatch(
            f"{service}: the database schema is at {current or 'no revision'}, this code needs {head}; "
            f"run `nurture migrate` (or start with NURTURE_MIGRATE=on_start) before serving")
    raise SchemaMismatch(
        f"{service}: the database schema is at {current}, newer than this code knows (its newest is {head}); "
        f"deploy the code that wrote it, or downgrade the schema first")


def open_database(settings: Settings, *, service: str, migrations_dir: Path) -> Database:
    """Open (creating under the data dir when embedded) a service's database: migrated on start
    (`NURTURE_MIGRATE=on_start`, the default), or only checked (`check`: a deployment that runs
    `nurture migrate` once, before its replicas start, and wants a replica on an older or newer schema
    to refuse to serve)."""
    url = settings.database_url_for(service)
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url, service=service)
    try:
        if settings.migrate == "check":
            check_schema(engine, service=service, migrations_dir=migrations_dir)
        else:
            migrate(engine, service=service, migrations_dir=migrations_dir)
    except BaseException:
        engine.dispose()
        raise
    instrument_engine(engine)
    return Database(engine, service=service)


def run_alembic_env() -> None:
    """The body of every service's `migrations/env.py`: online migrations on the connection that
    `migrate` hands over, with the service's own version table."""
    from alembic import context

    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:  # `alembic` CLI use: build a connection from the URL in the ini
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://")
        with engine.begin() as conn:
            context.configure(connection=conn, version_table=config.attributes.get("version_table"))
            context.run_migrations()
        return
    context.configure(connection=connection, version_table=config.attributes["version_table"])
    with context.begin_transaction():
        context.run_migrations()


def insert_new(session: Session, table: Table, keys: Sequence[str]) -> Any:
    """`INSERT ... ON CONFLICT (keys) DO NOTHING` in the session's dialect (SQLite and PostgreSQL
    spell it alike): a row whose key exists, committed or being inserted by a concurrent
    transaction, is skipped without an error, where a read-then-insert fails with a unique
    violation when two transactions insert one new key. Add `.returning(...)` to learn which rows
    were new."""
    dialect = session.get_bind().dialect.name
    if dialect not in ("postgresql", "sqlite"):
        raise RuntimeError(f"unsupported database {dialect}")
    make = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return make(table).on_conflict_do_nothing(index_elements=list(keys))


def plan_by_key(session: Session) -> None:
    """On PostgreSQL, plan the rest of this transaction without sequential scans where an index serves
    (`enable_seqscan = off`, this transaction only; a statement with no index to use still scans).

    For a transaction whose reads are look-ups of a batch's keys (`DriverWrites.select`): the planner prices an
    index probe per key (a few hundred) above one pass over a table of some ten thousand pages, or over
    one whose statistics lag a bulk load (autovacuum's ANALYZE comes after it), and chose a sequential
    scan of the whole table per batch, growing with the table, where the probes read a few pages each."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL enable_seqscan = off"))


class DriverWrites:
    """Hot-path writes straight on the DBAPI cursor of a SQLAlchemy connection, in its transaction.

    SQLAlchemy's execution of a cached statement (parameter processing, execution context, result
    setup, events) cost more than SQLite's own work on the ingest path: about half of a small
    transaction. These build each statement's SQL once per shape and convert values with the same
    bind processors SQLAlchemy would use (SQLite's datetime text form, booleans), so the rows are
    the ones `insert(table)` writes. The transaction's span still lists each statement."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dialect = engine.dialect
        # qmark (sqlite3) or format/pyformat (psycopg): both take positional parameters as below.
        self._mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._sql: dict[tuple[Any, ...], str] = {}
        self._processors: dict[tuple[Any, ...], list[Callable[[Any], Any] | None]] = {}

    def begin(self) -> AbstractContextManager[Connection]:
        """A Core transaction for these writes: committed on success, rolled back on an exception."""
        return self._engine.begin()

    @contextmanager
    def pipelined(self) -> Iterator[Connection]:
        """`begin()`, with its statements pipelined on PostgreSQL (psycopg's pipeline mode): each is sent
        without waiting for its answer, a read (`select`) waits once for itself and everything sent
        before it, and the commit goes with the writes sent after the last read. A transaction that
        reads, then writes, costs two round trips whatever its statement count, where the ingest's
        seven statements cost seven (each round trip is a wake-up of the server's process and of
        ours: on a busy host, most of a paced event's time). Inside, only this object's statements
        (SQLAlchemy's own execution would read a statement's answer at once). An error surfaces at
        the next read or at the commit, and the whole transaction is rolled back as usual.

        The transaction's BEGIN and COMMIT are our own statements on an autocommit connection, so
        that BEGIN travels with the first read and COMMIT with the writes (psycopg's implicit BEGIN
        waits for its answer, and leaving pipeline mode waits for one more). On SQLite, `begin()`."""
        with self._engine.begin() as conn:
            if self._dialect.name != "postgresql":
                yield conn
                return
            dbapi: Any = conn.connection.dbapi_connection
            dbapi.autocommit = True
            try:
                with dbapi.pipeline():
                    conn.info["nurture_pipelined"] = True
                    self._run(conn, "BEGIN", None, many=False)
                    yield conn
                    self._run(conn, "COMMIT", None, many=False)
                # Leaving pipeline mode sent a Sync and read every answer: the commit's outcome is known.
            finally:
                conn.info.pop("nurture_pipelined", None)
                try:
                    if dbapi.info.transaction_status != _PG_IDLE:  # failed, or interrupted before COMMIT
                        dbapi.rollback()
                    dbapi.autocommit = False
                except Exception:  # a broken connection: SQLAlchemy's rollback discards it from the pool
                    log.debug("could not reset a pipelined connection", exc_info=True)
            # SQLAlchemy's commit on leaving begin() finds no transaction open and sends nothing.

    def select(self, conn: Connection, table: Table, columns: Sequence[str], key: str, values: Sequence[Any], *,
               lock: bool = False, also: tuple[str, Sequence[Any]] | None = None) -> list[dict[str, Any]]:
        """`SELECT columns FROM table WHERE key IN values ORDER BY key` (on PostgreSQL `key = ANY(array)`),
        with `lock` `FOR UPDATE` on PostgreSQL (rows locked in key order: LockRows sits above the sort);
        each row a dict, its values
        converted as SQLAlchemy would (SQLite's datetime text). `also` (column, values) narrows it with
        `AND column IN values` (so that an index on (key, column) finds just those rows)."""
        out: list[dict[str, Any]] = []
        if also is not None and not also[1]:
            return out
        processors = self._results(table, columns)
        locking = " FOR UPDATE" if lock and self._dialect.name == "postgresql" else ""
        if self._dialect.name == "postgresql":
            # One array per list, whatever its length: an `IN` list's text changes with its length, and
            # psycopg parses each new text in Python (a fold's look-ups of a thousand keys each).
            sql = self._statement(("select any", table.name, tuple(columns), key, also and also[0], locking), lambda: (
                f"SELECT {', '.join(columns)} FROM {table.name} WHERE {key} = ANY({self._array(table, key)})"
                + (f" AND {also[0]} = ANY({self._array(table, also[0])})" if also else "")
                + f" ORDER BY {key}{locking}"))
            params = [list(values), *([list(also[1])] if also else [])]
            rows = self._run(conn, sql, params, many=False, fetch=True) if values else []
            return [{c: v if p is None or v is None else p(v) for c, p, v in zip(columns, processors, row, strict=True)}
                    for row in rows]
        others: list[list[Any] | None] = [None] if also is None else [
            list(also[1][i:i + _ROWS_PER_STATEMENT]) for i in range(0, len(also[1]), _ROWS_PER_STATEMENT)]
        for start in range(0, len(values), _ROWS_PER_STATEMENT):
            chunk = list(values[start:start + _ROWS_PER_STATEMENT])
            for other in others:
                extra = f" AND {also[0]} IN ({', '.join([self._mark] * len(other))})" if also and other else ""
                shape = ("select", table.name, tuple(columns), key, len(chunk), locking, extra)
                sql = self._statement(shape, lambda n=len(chunk), extra=extra: (
                    f"SELECT {', '.join(columns)} FROM {table.name} WHERE {key} IN ({', '.join([self._mark] * n)})"
                    f"{extra} ORDER BY {key}{locking}"))
                for row in self._run(conn, sql, chunk + (other or []), many=False, fetch=True):
                    out.append({c: v if p is None or v is None else p(v)
                                for c, p, v in zip(columns, processors, row, strict=True)})
        return out

    def insert(self, conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]],
               returning: str | None = None, *, skip_existing: Sequence[str] = ()) -> list[Any]:
        """Insert `rows` (values in `columns` order); with `returning`, that column of each new row,
        in ascending order (one multi-row INSERT per chunk, so a chunk's ids follow its rows). With
        `skip_existing` (a unique key's columns; needs `returning`), a row whose key exists, committed or
        being inserted by a concurrent transaction, is skipped (`ON CONFLICT DO NOTHING`, see
        `insert_new`) and left out of what is returned."""
        if skip_existing and returning is None:
            raise ValueError("skip_existing needs returning: the caller learns which rows were new")
        if returning is None:
            if self._arrays(rows):
                # WITH ORDINALITY ... ORDER BY: a serial column numbers the rows in the order given.
                sql = self._statement(("insert arrays", table.name, tuple(columns)), lambda: (
                    f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT {', '.join(columns)} FROM "
                    f"{self._unnest(table, columns)} WITH ORDINALITY AS u({', '.join(columns)}, ord) ORDER BY ord"))
                self._run(conn, sql, self._columns(table, columns, rows), many=False)
                return []
            sql = self._statement(("insert", table.name, tuple(columns)), lambda: (
                f"INSERT INTO {table.name} ({', '.join(columns)}) "
                f"VALUES ({', '.join([self._mark] * len(columns))})"))
            self._run(conn, sql, self._process(table, columns, rows), many=True)
            return []
        return self.insert_later(conn, table, columns, rows, returning, skip_existing=skip_existing)()

    def insert_later(self, conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                     returning: str, *, skip_existing: Sequence[str] = ()) -> Callable[[], list[Any]]:
        """`insert` with `returning`, whose values are read by calling the result: in a `pipelined`
        transaction after its commit (reading them before would cost a round trip of its own), else
        at once (the call only hands them over)."""
        processed = self._process(table, columns, rows)
        cursors = []
        later = bool(conn.info.get("nurture_pipelined"))
        for start in range(0, len(processed), _ROWS_PER_STATEMENT):
            chunk = processed[start:start + _ROWS_PER_STATEMENT]
            conflict = f" ON CONFLICT ({', '.join(skip_existing)}) DO NOTHING" if skip_existing else ""
            shape = ("insert", table.name, tuple(columns), len(chunk), returning, conflict)
            sql = self._statement(shape, lambda n=len(chunk), conflict=conflict: (
                f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
                + ", ".join([f"({', '.join([self._mark] * len(columns))})"] * n)
                + f"{conflict} RETURNING {returning}"))
            cursors.append(self._send(conn, sql, [v for row in chunk for v in row], many=False))

        def read() -> list[Any]:
            out: list[Any] = []
            for cursor in cursors:
                try:
                    out.extend(sorted(r[0] for r in cursor.fetchall()))
                finally:
                    cursor.close()
            return out

        if later:
            return read
        values = read()
        return lambda: values

    def update(self, conn: Connection, table: Table, columns: Sequence[str], key: str,
               rows: Sequence[Sequence[Any]]) -> None:
        """`UPDATE table SET columns... WHERE key = ?` per row; each row is the new values in `columns`
        order followed by the key."""
        sql = self._statement(("update", table.name, tuple(columns), key), lambda: (
            f"UPDATE {table.name} SET {', '.join(f'{c} = {self._mark}' for c in columns)} "
            f"WHERE {key} = {self._mark}"))
        self._run(conn, sql, self._process(table, [*columns, key], rows), many=True)

    def upsert(self, conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
               keys: Sequence[str], add: Sequence[str] = (), ignore: bool = False) -> None:
        """Insert rows (values in `columns` order); on a key that exists, add the `add` columns to the
        stored ones and replace the other non-key columns (or with `ignore`, or when every column is a
        key, leave the row as it is). `ON CONFLICT` reads the same on SQLite and PostgreSQL."""
        if not rows:
            return
        others = [c for c in columns if c not in keys]
        arrays = self._arrays(rows)
        conflict = f"ON CONFLICT ({', '.join(keys)}) " + (
            "DO NOTHING" if ignore or not others else "DO UPDATE SET " + ", ".join(
                f"{c} = {table.name}.{c} + excluded.{c}" if c in add else f"{c} = excluded.{c}" for c in others))
        sql = self._statement(("upsert", table.name, tuple(columns), tuple(keys), tuple(add), ignore, arrays), lambda: (
            f"INSERT INTO {table.name} ({', '.join(columns)}) "
            + (f"SELECT * FROM {self._unnest(table, columns)} " if arrays
               else f"VALUES ({', '.join([self._mark] * len(columns))}) ") + conflict))
        if not arrays:
            self._run(conn, sql, self._process(table, columns, rows), many=True)
            return
        # One statement may not update a row twice: rows sharing a key are merged first, as upserting
        # them in turn would leave the row (the `add` columns summed, the last row's other values; with
        # nothing to update, the first row).
        position = [columns.index(k) for k in keys]
        merged: dict[tuple[Any, ...], list[Any]] = {}
        summed = [columns.index(c) for c in add] if others and not ignore else []
        for row in rows:
            key = tuple(row[i] for i in position)
            seen = merged.get(key)
            if seen is None:
                merged[key] = list(row)
            elif others and not ignore:
                totals = [seen[i] + row[i] for i in summed]
                seen[:] = row
                for i, total in zip(summed, totals, strict=True):
                    seen[i] = total
        self._run(conn, sql, self._columns(table, columns, list(merged.values())), many=False)

    def delete(self, conn: Connection, table: Table, key: str, values: Sequence[Any]) -> None:
        """`DELETE FROM table WHERE key IN values`."""
        for start in range(0, len(values), _ROWS_PER_STATEMENT):
            chunk = list(values[start:start + _ROWS_PER_STATEMENT])
            sql = self._statement(("delete", table.name, key, len(chunk)), lambda n=len(chunk): (
                f"DELETE FROM {table.name} WHERE {key} IN ({', '.join([self._mark] * n)})"))
            self._run(conn, sql, chunk, many=False)

    def _arrays(self, rows: Sequence[Sequence[Any]]) -> bool:
        """Whether to send these rows as one array per column (PostgreSQL, more than one row): psycopg's
        executemany sends and answers each row as a statement of its own, in Python, which was over half
        of analytics' fold there; a multi-row VALUES text with a placeholder per value cost more (psycopg
        parses each new text in Python). Arrays keep one placeholder per column whatever the rows."""
        return self._dialect.name == "postgresql" and len(rows) > 1

    def _unnest(self, table: Table, columns: Sequence[str]) -> str:
        """`unnest(%b::type[], ...)`: one array parameter per column, cast to the column's own type, sent in
        binary (psycopg's text form escapes every element with a regular expression, in Python: most of
        the arrays' cost)."""
        return "unnest(" + ", ".join(self._array(table, c) for c in columns) + ")"

    def _array(self, table: Table, column: str) -> str:
        """A binary array parameter of `column`'s type."""
        return f"%b::{table.c[column].type.compile(dialect=self._dialect)}[]"

    def _columns(self, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
        """The rows' values, converted as SQLAlchemy would, as one list per column."""
        return [list(values) for values in zip(*self._process(table, columns, rows), strict=True)]

    def _statement(self, shape: tuple[Any, ...], build: Callable[..., str]) -> str:
        sql = self._sql.get(shape)
        if sql is None:
            sql = build()
            if len(self._sql) < 10_000:  # shapes are few (chunk sizes); a bound all the same
                self._sql[shape] = sql
        return sql

    def _process(self, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        shape = (table.name, tuple(columns))
        processors = self._processors.get(shape)
        if processors is None:
            processors = self._processors[shape] = [
                table.c[c].type.dialect_impl(self._dialect).bind_processor(self._dialect) for c in columns]
        converted: list[tuple[int, Callable[[Any], Any], dict[Any, Any] | None]] = [
            (i, p, {} if isinstance(table.c[columns[i]].type, _FEW_VALUES) else None)
            for i, p in enumerate(processors) if p is not None]
        if not converted:
            return [tuple(row) for row in rows]
        # Only the columns that convert are touched (SQLite's dates and times, mostly): a generator over
        # every value of every row cost more than the database's own work in analytics' fold. A column
        # of few distinct values (a day, a flag) converts each value once per call: analytics' aggregates
        # repeat a batch's few days over thousands of rows, and SQLite's date processor (a % format of
        # a dict) was a tenth of its fold's CPU.
        out: list[tuple[Any, ...]] = []
        for row in rows:
            values = list(row)
            for i, p, memo in converted:
                v = values[i]
                if v is None:
                    continue
                if memo is None:
                    values[i] = p(v)
                elif (done := memo.get(v)) is not None:
                    values[i] = done
                else:
                    values[i] = memo[v] = p(v)
            out.append(tuple(values))
        return out

    def _results(self, table: Table, columns: Sequence[str]) -> list[Callable[[Any], Any] | None]:
        shape = ("result", table.name, tuple(columns))
        processors = self._processors.get(shape)
        if processors is None:
            processors = self._processors[shape] = [self._result(table.c[c].type) for c in columns]
        return processors

    def _result(self, type_: Any) -> Callable[[Any], Any] | None:
        if self._dialect.name == "postgresql" and isinstance(type_, Float):
            # psycopg returns a double precision column as a float already; SQLAlchemy's processor wants
            # the result's type oid, which a driver cursor's caller does not pass.
            return None
        processor = type_.dialect_impl(self._dialect).result_processor(self._dialect, None)
        return cast(Callable[[Any], Any] | None, processor)

    @classmethod
    def _run(cls, conn: Connection, sql: str, params: Any, *, many: bool, fetch: bool = False) -> list[Any]:
        cursor = cls._send(conn, sql, params, many=many)
        try:
            return list(cursor.fetchall()) if fetch else []
        finally:
            cursor.close()

    @staticmethod
    def _send(conn: Connection, sql: str, params: Any, *, many: bool) -> Any:
        """The statement executed (in a pipeline: queued) on a new cursor, which the caller closes."""
        record_statement(conn, sql, many)
        # A checked-out connection always holds its DBAPI connection; SQLAlchemy types it Optional.
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            if many:
                cursor.executemany(sql, params)
            else:
                cursor.execute(sql, params)
        except BaseException:
            cursor.close()
            raise
        return cursor


_SESSION_WRITES: weakref.WeakKeyDictionary[Engine, DriverWrites] = weakref.WeakKeyDictionary()


def session_writes(session: Session) -> tuple[DriverWrites, Connection]:
    """The `DriverWrites` of the session's engine (made once per engine) and the session's connection:
    hot-path writes in the session's own transaction, beside its SQLAlchemy statements."""
    conn = session.connection()
    engine = conn.engine
    writes = _SESSION_WRITES.get(engine)
    if writes is None:
        writes = _SESSION_WRITES[engine] = DriverWrites(engine)
    return writes, conn


# Column types whose values in one statement's rows are few (days, flags): converted once per value.
# DateTime is not among them (a timestamp per row), nor is it a subclass of Date.
_FEW_VALUES = (Date, Boolean)
# psycopg's TransactionStatus.IDLE (no transaction open), without importing the driver where it is absent.
_PG_IDLE = 0
# Rows per multi-row statement: well under SQLite's 32,766 variables and PostgreSQL's 65,535.
_ROWS_PER_STATEMENT = 1000
