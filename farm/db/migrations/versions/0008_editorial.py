"""The editorial loop: renders named by content hash, story revisions, re-rolls and picks.

Why: a story rendered once and never again is not how a studio works; it reviews, re-rolls,
picks and edits. Each render now carries the hash of everything that decides its pixels (and
of its scene's recipe without the seed), so a resubmitted or revised story renders only what
changed; a reused render has no shard of its own, hence `shard_id` may be empty. A job keeps
each revision of its story (`job_revisions`) and the renders a revision dropped
(`retired_renders`), with the revision that made each render; `picked` marks the variant a
person chose for the comic. Existing jobs get their story as revision 1.

Downgrade drops the revisions, the retired renders and the new columns (history and picks are
lost, the current renders stay); it refuses while a render without a shard exists, which the
old schema cannot hold.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from farm.db.types import sql_now

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created", sa.DateTime(timezone=True), server_default=sql_now(), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), server_default=sql_now(), nullable=False),
    ]


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("revision", sa.Integer(), server_default=sa.text("1"), nullable=False)
        )
    with op.batch_alter_table("renders") as batch:
        batch.alter_column("shard_id", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("content_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("scene_hash", sa.String(64), nullable=True))
        batch.add_column(
            sa.Column("revision", sa.Integer(), server_default=sa.text("1"), nullable=False)
        )
        batch.add_column(
            sa.Column("picked", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("reused_from_job", sa.String(36), nullable=True))
        batch.create_index(op.f("ix_renders_content_hash"), ["content_hash"])
    op.create_table(
        "job_revisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("kept", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("reused", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("rendered", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("retired", sa.Integer(), server_default=sa.text("0"), nullable=False),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_job_revisions_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_revisions")),
        sa.UniqueConstraint("job_id", "number", name=op.f("uq_job_revisions_job_id_number")),
    )
    op.create_table(
        "retired_renders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("retired_in", sa.Integer(), nullable=False),
        sa.Column("scene_index", sa.Integer(), nullable=False),
        sa.Column("variant", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("negative", sa.Text(), nullable=False),
        sa.Column("caption", sa.Text(), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("storage_key", sa.String(1024), nullable=False),
        sa.Column("thumb_key", sa.String(1024), nullable=True),
        sa.Column("face_similarity", sa.Double(), nullable=True),
        sa.Column("qc_seed", sa.BigInteger(), nullable=True),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_retired_renders_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retired_renders")),
    )
    op.create_index(
        op.f("ix_retired_renders_job_id_revision"), "retired_renders", ["job_id", "revision"]
    )
    op.create_index(op.f("ix_retired_renders_content_hash"), "retired_renders", ["content_hash"])
    # Every job so far is at its first revision: its story as submitted.
    op.execute(
        "INSERT INTO job_revisions (job_id, number, spec, summary) "
        "SELECT id, 1, spec, 'submitted' FROM jobs"
    )


def downgrade() -> None:
    bind = op.get_bind()
    shardless = bind.execute(sa.text("SELECT count(*) FROM renders WHERE shard_id IS NULL"))
    if shardless.scalar():
        raise RuntimeError(
            "renders reused by content hash have no shard, which revision 0007 cannot hold; "
            "delete their jobs first"
        )
    op.drop_index(op.f("ix_retired_renders_content_hash"), table_name="retired_renders")
    op.drop_index(op.f("ix_retired_renders_job_id_revision"), table_name="retired_renders")
    op.drop_table("retired_renders")
    op.drop_table("job_revisions")
    with op.batch_alter_table("renders") as batch:
        batch.drop_index(op.f("ix_renders_content_hash"))
        batch.drop_column("reused_from_job")
        batch.drop_column("picked")
        batch.drop_column("revision")
        batch.drop_column("scene_hash")
        batch.drop_column("content_hash")
        batch.alter_column("shard_id", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("revision")
