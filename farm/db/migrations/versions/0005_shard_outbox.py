"""When each shard's task was handed to the broker, and which ended jobs still wait for their
finalize task: the farm's tables as their own outbox.

Why: a job's shards were committed first and their tasks sent after; a broker that was down
at that moment left queued shards that no task named, found only once the reaper saw their
queue empty. `sent` is written in the same transaction as the shard (empty: not sent yet) and
set once the broker took the task, so the reaper sends exactly the shards whose send never
happened. Rows that exist already were sent when they were made, so they get their `updated`
time. Likewise `jobs.finalize_pending` is set in the transaction that ends a job and cleared
once its finalize task (comic, exports, webhook) was sent, so a broker down at a job's end does
not lose its webhook; jobs that ended before this migration were finalized then. Downgrade drops
both columns and their indexes: sending falls back to the reaper's pass over queued shards whose
queue is empty, and a finalize the broker refused is lost again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shards") as batch:
        batch.add_column(sa.Column("sent", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE shards SET sent = updated")
    op.create_index(op.f("ix_shards_status_sent"), "shards", ["status", "sent"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("finalize_pending", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    op.create_index(op.f("ix_jobs_finalize_pending"), "jobs", ["finalize_pending"])


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_finalize_pending"), table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("finalize_pending")
    op.drop_index(op.f("ix_shards_status_sent"), table_name="shards")
    with op.batch_alter_table("shards") as batch:
        batch.drop_column("sent")
