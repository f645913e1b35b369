"""Apply the farm's migrations from code: the only way its schema is made.

The Alembic configuration is built here rather than read from an alembic.ini, so that the
CLI, the Helm migrations job and the tests all migrate an installed farm the same way.
Each command runs in one transaction, on SQLite too, so a failed migration leaves nothing
half done.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from farm.db.session import make_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def upgrade(database_url: str, revision: str = "head") -> None:
    with _migration_connection(database_url) as connection:
        command.upgrade(_config(connection), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Go back to `revision` ("base": an empty schema); data in dropped tables is lost."""
    with _migration_connection(database_url) as connection:
        command.downgrade(_config(connection), revision)


def current(database_url: str) -> str | None:
    """The revision the database is at; None for a database never migrated."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head() -> str:
    """The newest revision this code knows, to compare with `current`."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None, f"no migrations in {MIGRATIONS_DIR}"
    return revision


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Handed over as an object, not a URL in the config, whose parser would choke on a '%'
    # in a password.
    config.attributes["connection"] = connection
    return config


@contextmanager
def _migration_connection(database_url: str) -> Iterator[Connection]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                _prepare_sqlite(connection)
            with connection.begin():
                if connection.dialect.name == "sqlite":
                    connection.exec_driver_sql("BEGIN")
                yield connection
                if connection.dialect.name == "sqlite":
                    _check_sqlite_foreign_keys(connection)
    finally:
        engine.dispose()


def _prepare_sqlite(connection: Connection) -> None:
    """Take over SQLite's transactions and switch its foreign keys off, for this connection.

    Python's sqlite3 runs DDL outside any transaction unless BEGIN is sent by hand. And batch
    mode alters a table by copying and dropping it; with foreign keys on, that drop would
    cascade-delete the rows that refer to it. Both settings must be made outside a
    transaction, on the driver's connection, before SQLAlchemy begins one. The engine is this
    command's own and is disposed after it, so they do not leak into the farm's sessions.
    """
    driver_connection = connection.connection.driver_connection
    assert driver_connection is not None
    driver_connection.isolation_level = None
    driver_connection.execute("PRAGMA foreign_keys=OFF")


def _check_sqlite_foreign_keys(connection: Connection) -> None:
    """Do what SQLite skipped while foreign keys were off: refuse to commit dangling references."""
    problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if problems:
        raise RuntimeError(f"the migration left rows with dangling foreign keys: {problems[:10]}")
