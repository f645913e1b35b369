"""Alembic's entry point, run by `farm.db.migrate` with a connection already in a transaction.

There is no URL or engine here: the caller owns the connection and its transaction, so the
whole command commits or rolls back as one.
"""

from alembic import context

from farm.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through farm.db.migrate, which provides the connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
