"""Each render's denoising step, so that progress moves per step and not per shard.

Why: a shard's renders run as one batch and were marked done together, so a job's progress sat
at 0% for the whole of its first shard and then jumped (0% for 77 s, then 67%). The worker now
writes the step its running batch has reached (at most once a second) on the batch's render
rows, and the job page, the API and `farm status` count a running render by its share of
steps done. `steps` is the render's number of denoising steps (a fast preset's, not the
story's). Downgrade drops both columns: progress moves per render again.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("renders") as batch:
        batch.add_column(
            sa.Column("steps_done", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(sa.Column("steps", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("renders") as batch:
        batch.drop_column("steps")
        batch.drop_column("steps_done")
