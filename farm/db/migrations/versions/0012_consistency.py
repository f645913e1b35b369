"""The reference-scene tokens of story-mode consistency, recorded per job.

Why: a story with `consistency: {mode: story}` (issue 16) renders its reference scenes first and
stores the self-attention tokens they share under `consistency/<character>/<digest>/`, one
object per denoising step, read by every worker that renders the story and shared by every job
with the same references. This table lists which jobs use which stored tokens, so that
`farm gc` keeps them while a job (a retry, a revision) may read them, drops the rows with their
job, and says what they take in storage. Downgrade drops the table (the stored tokens become
garbage for `farm gc`; a story that needs them renders its references again).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from farm.db.types import sql_now

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_consistency_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("storage_prefix", sa.String(1024), nullable=False),
        sa.Column("references", sa.Integer(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), server_default=sql_now(), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), server_default=sql_now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_job_consistency_tokens_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_consistency_tokens")),
        sa.UniqueConstraint(
            "job_id",
            "storage_prefix",
            name=op.f("uq_job_consistency_tokens_job_id_storage_prefix"),
        ),
    )
    op.create_index(
        op.f("ix_job_consistency_tokens_storage_prefix"),
        "job_consistency_tokens",
        ["storage_prefix"],
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_job_consistency_tokens_storage_prefix"), table_name="job_consistency_tokens"
    )
    op.drop_table("job_consistency_tokens")
