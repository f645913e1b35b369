"""Interruptions counted apart from failures, the checkpoint a preempted shard resumes from,
and each worker's failures per job, which keep a failing worker off that job.

Why: a worker told to stop (a spot node's SIGTERM, a scale-down, `farm drain`) used to finish
or lose its shard, and a lost shard cost an attempt, so three preemptions failed a job that
nothing was wrong with. Now such a shard is requeued as interrupted: `shards.interruptions`
counts it and its attempts are left as they were, and `checkpoint_key` / `checkpoint_step`
name the latents and scheduler state (in object storage) that the next worker resumes from.
`job_worker_failures` counts, per job and worker, the shards of that job the worker failed;
at two, the worker takes no more of that job's shards (a soft-fail blocklist, as render
managers keep one). Downgrade drops the columns and the table: interruptions count as
attempts again, checkpoints are forgotten (their objects are left for `farm gc`) and no worker
is kept off a job.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from farm.db.types import sql_now

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shards") as batch:
        batch.add_column(
            sa.Column("interruptions", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(sa.Column("checkpoint_key", sa.String(1024), nullable=True))
        batch.add_column(sa.Column("checkpoint_step", sa.Integer(), nullable=True))
    op.create_table(
        "job_worker_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("worker_id", sa.String(255), nullable=False),
        sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), server_default=sql_now(), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), server_default=sql_now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_job_worker_failures_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_worker_failures")),
        sa.UniqueConstraint(
            "job_id", "worker_id", name=op.f("uq_job_worker_failures_job_id_worker_id")
        ),
    )


def downgrade() -> None:
    op.drop_table("job_worker_failures")
    with op.batch_alter_table("shards") as batch:
        batch.drop_column("checkpoint_step")
        batch.drop_column("checkpoint_key")
        batch.drop_column("interruptions")
