"""Database engine and sessions; the same code runs on SQLite (embedded) and PostgreSQL."""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, create_engine

if TYPE_CHECKING:
    import sqlite3

# SQLite calls the progress handler every this many virtual-machine steps (~0.1 ms of work).
_SQLITE_PROGRESS_STEPS = 1000
# PostgreSQL errors about the moment, not the statement: serialization failure, deadlock, lock
# not available, admin shutdown, cannot connect now.
_PG_TRANSIENT = frozenset({"40001", "40P01", "55P03", "57P01", "57P03"})


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=8,
            max_overflow=16,
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers run beside the single writer; NORMAL sync is durable in WAL
            # mode across process crashes (only an OS crash can lose the last commits).
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(conn: Connection) -> None:
            # Take the write lock up front: a deferred transaction that later writes can fail
            # with SQLITE_BUSY instead of waiting, which would turn contention into 500s.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        # pysqlite's own transaction handling must be off for the BEGIN above to be ours.
        @event.listens_for(engine, "connect")
        def _sqlite_autocommit_off(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True, **kwargs)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def statement_budget(session: Session, seconds: float) -> Iterator[None]:
    """Inside the block, any statement of the session's transaction that runs longer than
    `seconds` is cancelled with an OperationalError (see `over_budget`).

    PostgreSQL: `SET LOCAL statement_timeout`, which lasts to the end of the transaction (or of
    the savepoint it was set in). SQLite: a progress handler on the DBAPI connection, removed when
    the block ends so the pooled connection serves others unbudgeted. A cancelled read leaves an
    SQLite transaction intact; a cancelled write rolls all of it back, so budgeted callers read
    the expensive part first and write with cheap statements.
    """
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        milliseconds = max(1, round(seconds * 1000))  # 0 would mean "no limit"
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {milliseconds}")
        yield
        return
    # Only SQLite gets here, and a checked-out connection always has its DBAPI connection.
    raw = cast("sqlite3.Connection", connection.connection.dbapi_connection)
    deadline = time.monotonic() + seconds

    def restart(*_args: Any) -> None:
        nonlocal deadline
        deadline = time.monotonic() + seconds

    event.listen(connection, "before_cursor_execute", restart)
    raw.set_progress_handler(lambda: time.monotonic() > deadline, _SQLITE_PROGRESS_STEPS)
    try:
        yield
    finally:
        raw.set_progress_handler(None, 0)
        event.remove(connection, "before_cursor_execute", restart)


def over_budget(exc: BaseException) -> bool:
    """Was this statement cancelled by `statement_budget`?"""
    if not isinstance(exc, DBAPIError):
        return False
    if getattr(exc.orig, "sqlstate", None) == "57014":  # query_canceled
        return True
    return "interrupted" in str(exc.orig)


def is_transient(exc: BaseException) -> bool:
    """An error about the moment (connection lost, lock contention, server restarting) that a
    retry of the same work can overcome: never a reason to blame the work itself."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if getattr(exc.orig, "sqlstate", None) in _PG_TRANSIENT:
        return True
    message = str(exc.orig)
    return "database is locked" in message or "database is busy" in message
