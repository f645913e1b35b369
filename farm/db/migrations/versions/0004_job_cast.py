"""The cast of a job: the characters besides the main one that its scenes may show.

Why: a scene may name several people (`a man img1 and a woman img2`), each fused with the ID
tokens of its own character. `jobs.character_id` stays the main character; this table lists the
others with the trigger word that stands for each in the job's prompts. Downgrade drops the
table: jobs keep their main character.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from farm.db.types import sql_now

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_cast",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("character_id", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(20), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), server_default=sql_now(), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), server_default=sql_now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_cast_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["character_id"], ["characters.id"], name=op.f("fk_job_cast_character_id_characters")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_cast")),
        sa.UniqueConstraint("job_id", "trigger", name=op.f("uq_job_cast_job_id_trigger")),
    )


def downgrade() -> None:
    op.drop_table("job_cast")
