"""The farm's first schema: characters, identity tokens, jobs, shards, renders, workers.

Why: SQL is the farm's source of truth. A story becomes a job of render rows grouped into shards
that workers claim under leases, so a dead worker's shard can be found and requeued, progress is
one indexed query, and a second job for the same photos finds their identity tokens already
made. States are strings with a CHECK rather than native enums, so that adding a state later is
a plain migration on SQLite and PostgreSQL alike.

Downgrade drops every table, and every row with them.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from farm.db.types import sql_now

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
_SHARD_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
_RENDER_STATES = ("queued", "running", "done", "failed", "cancelled")
_WORKER_STATES = ("starting", "idle", "busy", "draining", "stopped", "lost")


def _timestamp(name: str, **kw: object) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), **kw)


def _row_times() -> list[sa.Column]:
    return [
        _timestamp("created", server_default=sql_now(), nullable=False),
        _timestamp("updated", server_default=sql_now(), nullable=False),
    ]


def _status(table: str, states: Sequence[str]) -> list[sa.Column | sa.CheckConstraint]:
    """A state column; the first state is where a new row starts."""
    values = ", ".join(f"'{state}'" for state in states)
    return [
        sa.Column(
            "status", sa.String(20), server_default=sa.text(f"'{states[0]}'"), nullable=False
        ),
        sa.CheckConstraint(f"status IN ({values})", name=op.f(f"ck_{table}_status")),
    ]


def _key(name: str, **kw: object) -> sa.Column:
    return sa.Column(name, sa.String(1024), **kw)


def upgrade() -> None:
    op.create_table(
        "characters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("class_word", sa.String(30), nullable=False),
        sa.Column("trigger", sa.String(20), nullable=False),
        sa.Column("face_crop", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("photos_fingerprint", sa.String(64), nullable=False),
        _timestamp("deleted", nullable=True),
        *_row_times(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_characters")),
    )
    op.create_index(op.f("ix_characters_photos_fingerprint"), "characters", ["photos_fingerprint"])

    op.create_table(
        "character_photos",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("character_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        _key("storage_key", nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("face_x0", sa.Double(), nullable=True),
        sa.Column("face_y0", sa.Double(), nullable=True),
        sa.Column("face_x1", sa.Double(), nullable=True),
        sa.Column("face_y1", sa.Double(), nullable=True),
        sa.Column("face_score", sa.Double(), nullable=True),
        *_row_times(),
        sa.ForeignKeyConstraint(
            ["character_id"],
            ["characters.id"],
            name=op.f("fk_character_photos_character_id_characters"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_character_photos")),
        sa.UniqueConstraint(
            "character_id", "position", name=op.f("uq_character_photos_character_id_position")
        ),
    )

    op.create_table(
        "identity_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("encoder_fingerprint", sa.String(64), nullable=False),
        sa.Column("photos_fingerprint", sa.String(64), nullable=False),
        _key("storage_key", nullable=False),
        sa.Column("num_tokens", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=False),
        *_row_times(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_tokens")),
        sa.UniqueConstraint(
            "encoder_fingerprint",
            "photos_fingerprint",
            name=op.f("uq_identity_tokens_encoder_fingerprint_photos_fingerprint"),
        ),
    )

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("character_id", sa.Integer(), nullable=False),
        *_status("jobs", _JOB_STATES),
        sa.Column("preset", sa.String(64), nullable=False),
        sa.Column("priority", sa.Integer(), server_default=sa.text("5"), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("renders_total", sa.Integer(), nullable=False),
        sa.Column("webhook_url", sa.String(2048), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("started", nullable=True),
        _timestamp("finished", nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        *_row_times(),
        sa.CheckConstraint("priority BETWEEN 0 AND 9", name=op.f("ck_jobs_priority_range")),
        sa.ForeignKeyConstraint(
            ["character_id"], ["characters.id"], name=op.f("fk_jobs_character_id_characters")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_character_id"), "jobs", ["character_id"])
    op.create_index(op.f("ix_jobs_status_created"), "jobs", ["status", "created"])

    op.create_table(
        "shards",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        *_status("shards", _SHARD_STATES),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default=sa.text("3"), nullable=False),
        _timestamp("lease_expires", nullable=True),
        sa.Column("worker_id", sa.String(255), nullable=True),
        sa.Column("task_id", sa.String(255), nullable=True),
        _timestamp("started", nullable=True),
        _timestamp("finished", nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        *_row_times(),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_shards_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shards")),
        sa.UniqueConstraint("job_id", "index", name=op.f("uq_shards_job_id_index")),
    )
    op.create_index(op.f("ix_shards_status_lease_expires"), "shards", ["status", "lease_expires"])

    op.create_table(
        "renders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("shard_id", sa.Integer(), nullable=False),
        sa.Column("scene_index", sa.Integer(), nullable=False),
        sa.Column("variant", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("negative", sa.Text(), nullable=False),
        sa.Column("caption", sa.Text(), nullable=True),
        *_status("renders", _RENDER_STATES),
        _key("storage_key", nullable=True),
        _key("thumb_key", nullable=True),
        sa.Column("worker_id", sa.String(255), nullable=True),
        sa.Column("device", sa.String(255), nullable=True),
        sa.Column("identity_s", sa.Double(), nullable=True),
        sa.Column("denoise_s", sa.Double(), nullable=True),
        sa.Column("decode_s", sa.Double(), nullable=True),
        sa.Column("upload_s", sa.Double(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("face_similarity", sa.Double(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _timestamp("started", nullable=True),
        _timestamp("finished", nullable=True),
        *_row_times(),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_renders_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["shard_id"],
            ["shards.id"],
            name=op.f("fk_renders_shard_id_shards"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_renders")),
        sa.UniqueConstraint(
            "job_id", "scene_index", "variant", name=op.f("uq_renders_job_id_scene_index_variant")
        ),
    )
    op.create_index(op.f("ix_renders_job_id_status"), "renders", ["job_id", "status"])
    op.create_index(op.f("ix_renders_shard_id"), "renders", ["shard_id"])

    op.create_table(
        "workers",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("device", sa.String(255), nullable=False),
        sa.Column("presets", sa.JSON(), nullable=False),
        *_status("workers", _WORKER_STATES),
        sa.Column("current_shard_id", sa.Integer(), nullable=True),
        _timestamp("last_heartbeat", server_default=sql_now(), nullable=False),
        sa.Column("renders_done", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("renders_failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _timestamp("started", server_default=sql_now(), nullable=False),
        *_row_times(),
        sa.ForeignKeyConstraint(
            ["current_shard_id"],
            ["shards.id"],
            name=op.f("fk_workers_current_shard_id_shards"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )


def downgrade() -> None:
    # Referring tables first; each table's indexes and constraints go with it.
    for table in (
        "workers",
        "renders",
        "shards",
        "jobs",
        "identity_tokens",
        "character_photos",
        "characters",
    ):
        op.drop_table(table)
