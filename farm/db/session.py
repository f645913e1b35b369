"""Engines and sessions for the farm's database, tuned per backend; nothing is read at import.

The embedded default is an SQLite file shared by the dashboard and local worker processes, so it
gets WAL (readers never block the writer), foreign keys (off by default in SQLite) and a busy
timeout (a writer waits its turn instead of failing at once). PostgreSQL gets a pre-ping, so a
connection the server dropped while a worker rendered is replaced instead of failing a task.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_S = 30
POSTGRES_CONNECT_TIMEOUT_S = 10


def make_engine(database_url: str | URL) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if url.drivername == "postgresql":
        # Name the driver the farm installs, whichever one this SQLAlchemy defaults to.
        url = url.set(drivername="postgresql+psycopg")
    connect_args = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _sqlite_engine(url: URL) -> Engine:
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        # A fresh machine has no data folder yet; SQLite's own error would not say so.
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # Sessions keep the sqlite3 driver's own transactions (BEGIN just before the first write):
    # a write then waits out the busy timeout, where a write after a read in an explicit
    # transaction would fail at once if another process wrote meanwhile.
    engine = create_engine(
        url,
        # Sessions are handed between threads (the dashboard's, a worker's heartbeat); the pool
        # still gives each connection to one thread at a time.
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
    )
    event.listen(engine, "connect", _set_sqlite_pragmas)
    return engine


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # With WAL, NORMAL loses at most the last commits on power loss, never consistency.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose rows stay readable after commit.

    A row returned from a unit of work (the job just submitted, to the API's answer) would
    otherwise raise on first access once its session is closed. Each task and each request
    opens its own session, so nothing stays stale for longer than one of them.
    """
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit when the block ends, roll back if anything escapes it."""
    with factory.begin() as session:
        yield session
