"""Job names, preview jobs, and the `awaiting_approval` job state.

Why: a job was known only by a UUID, so people copied ids around and downloads were called
`job-<uuid>.zip`; `jobs.name` holds what people call it (the story's title, or its character
and date), existing jobs get their character's name and day. A story may ask for approval of a
preview first: a fast, low-resolution job renders every scene once (`jobs.preview_of` names
the job it previews) while the job itself waits in `awaiting_approval`, holding no GPU, until
scenes are approved. Downgrade drops both columns; jobs awaiting approval are cancelled first,
since the older schema has no such state.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = ("queued", "running", "succeeded", "failed", "cancelled")
_AFTER = (*_BEFORE, "awaiting_approval")


def _status_check(states: Sequence[str]) -> str:
    return "status IN ({})".format(", ".join(f"'{state}'" for state in states))


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("name", sa.String(255), nullable=True))
        batch.add_column(sa.Column("preview_of", sa.String(36), nullable=True))
        batch.create_foreign_key(
            op.f("fk_jobs_preview_of_jobs"), "jobs", ["preview_of"], ["id"], ondelete="CASCADE"
        )
        batch.create_index(op.f("ix_jobs_preview_of"), ["preview_of"])
        batch.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_status"), _status_check(_AFTER))
    op.execute(
        "UPDATE jobs SET name = (SELECT characters.name FROM characters "
        "WHERE characters.id = jobs.character_id) || ' ' || substr(CAST(created AS VARCHAR), 1, 10)"
    )
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("name", existing_type=sa.String(255), nullable=False)


def downgrade() -> None:
    op.execute(
        "UPDATE jobs SET status = 'cancelled', cancel_requested = true "
        "WHERE status = 'awaiting_approval'"
    )
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_status"), _status_check(_BEFORE))
        batch.drop_index(op.f("ix_jobs_preview_of"))
        batch.drop_constraint(op.f("fk_jobs_preview_of_jobs"), type_="foreignkey")
        batch.drop_column("preview_of")
        batch.drop_column("name")
