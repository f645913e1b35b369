"""The control images of a job's scenes: pose, depth and edge maps, stored once per content.

Why: a scene may carry a control map (issue 16). Its bytes are stored under `controls/` named
by their SHA-256, shared by every job that sends the same image, and the job's story names it
as `sha256:<hex>`; this table lists which jobs use which image, so that `farm gc` keeps an image
while any job (a preview, a retry) may read it, and removes the rows with their job. Outfits
and locations need no table: they are part of the story, kept whole in `jobs.spec`. Downgrade
drops the table (the stored images become garbage for `farm gc`).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from farm.db.types import sql_now

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_control_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("storage_key", sa.String(1024), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), server_default=sql_now(), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), server_default=sql_now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_job_control_images_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_control_images")),
        sa.UniqueConstraint("job_id", "sha256", name=op.f("uq_job_control_images_job_id_sha256")),
    )
    op.create_index(
        op.f("ix_job_control_images_storage_key"), "job_control_images", ["storage_key"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_job_control_images_storage_key"), table_name="job_control_images")
    op.drop_table("job_control_images")
