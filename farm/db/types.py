"""The timestamp type and the clocks every table uses.

The migrations import `sql_now` from here, so its name and the SQL it renders must never
change; a different default gets a new name and a migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """This machine's clock as an aware UTC time, for the timestamps that transitions set."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is an aware UTC `datetime` in Python on every backend.

    PostgreSQL stores `timestamptz` and answers in the session's time zone; SQLite has no time
    type and answers naive text. Both are brought to UTC here. A naive value is refused on the
    way in, because which clock it was read from cannot be known.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} given for a UTC timestamp column; "
                "pass an aware one, e.g. farm.db.types.utcnow()"
            )
        value = value.astimezone(UTC)
        # SQLite would store the offset-less text of any zone; in UTC that text sorts correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class sql_now(FunctionElement[datetime]):
    """The database's clock, for `created` and `updated`: one clock for rows from all machines.

    SQLite's CURRENT_TIMESTAMP has whole seconds only and a different text form from the one
    SQLAlchemy writes, so SQLite gets milliseconds (its finest clock) written in SQLAlchemy's
    six-digit form, which sorts correctly against bound values. PostgreSQL gets the statement's
    time rather than the transaction's, so a long transaction does not stamp its last rows with
    its start.
    """

    type = UTCDateTime()
    inherit_cache = True


@compiles(sql_now)
def _sql_now_default(element: sql_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(sql_now, "sqlite")
def _sql_now_sqlite(element: sql_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


@compiles(sql_now, "postgresql")
def _sql_now_postgresql(element: sql_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "statement_timestamp()"
