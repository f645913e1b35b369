"""The reaper's last run, so that a reaper that stopped is seen before a job stalls.

Why: the reaper's beat ran as an unwatched child of one worker; when it died, nothing said so,
and a dead worker's shards stayed running until someone noticed a job stuck at 8/12. Every
scheduled reap now writes this one row (when, on which worker, on what interval), and
`farm workers` and the dashboard's `/readyz` report the reaper stale once it is three
intervals old. Downgrade drops the table: the reaper's liveness is no longer reported.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from farm.db.types import sql_now

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reaper_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_run", sa.DateTime(timezone=True), nullable=False),
        sa.Column("worker_id", sa.String(255), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), server_default=sql_now(), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), server_default=sql_now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reaper_runs")),
    )


def downgrade() -> None:
    op.drop_table("reaper_runs")
