"""Device seconds per render, each project's share of the farm, and paused jobs and shards.

Why: the farm could not say what a job or a team had cost, nor share the workers between
teams: a studio's render manager accounts for every GPU-second and serves projects by weight.
`renders.device_s` and `renders.device_kind` record what each render held its device for, and
on what make of device, so that jobs and projects are sums of their renders. A project gets a
weight (`share_weight`, 1 for every existing one: the farm stays shared evenly), an optional
cap on its running shards, and `share_pass`, how far it has been served, which the claim reads
to serve the project furthest behind. A producer may pause a job: it and its waiting shards are
`paused`, and workers do not claim them. Downgrade resumes paused jobs and shards first (the
older schema has no such state) and drops the columns, and with them what was measured.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JOBS_BEFORE = ("queued", "running", "succeeded", "failed", "cancelled", "awaiting_approval")
_SHARDS_BEFORE = ("queued", "running", "succeeded", "failed", "cancelled")


def _status_check(states: Sequence[str]) -> str:
    return "status IN ({})".format(", ".join(f"'{state}'" for state in states))


def _states(table: str, states: Sequence[str]) -> None:
    with op.batch_alter_table(table) as batch:
        batch.drop_constraint(op.f(f"ck_{table}_status"), type_="check")
        batch.create_check_constraint(op.f(f"ck_{table}_status"), _status_check(states))


def upgrade() -> None:
    with op.batch_alter_table("renders") as batch:
        batch.add_column(sa.Column("device_s", sa.Double(), nullable=True))
        batch.add_column(sa.Column("device_kind", sa.String(255), nullable=True))
    with op.batch_alter_table("projects") as batch:
        batch.add_column(
            sa.Column("share_weight", sa.Double(), server_default=sa.text("1"), nullable=False)
        )
        batch.add_column(sa.Column("max_running_shards", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("share_pass", sa.Double(), server_default=sa.text("0"), nullable=False)
        )
        batch.create_check_constraint(op.f("ck_projects_share_weight_positive"), "share_weight > 0")
        batch.create_check_constraint(
            op.f("ck_projects_max_running_positive"),
            "max_running_shards IS NULL OR max_running_shards > 0",
        )
    _states("jobs", (*_JOBS_BEFORE, "paused"))
    _states("shards", (*_SHARDS_BEFORE, "paused"))


def downgrade() -> None:
    op.execute("UPDATE shards SET status = 'queued', sent = NULL WHERE status = 'paused'")
    op.execute(
        "UPDATE jobs SET status = CASE WHEN started IS NULL THEN 'queued' ELSE 'running' END "
        "WHERE status = 'paused'"
    )
    _states("shards", _SHARDS_BEFORE)
    _states("jobs", _JOBS_BEFORE)
    with op.batch_alter_table("projects") as batch:
        batch.drop_constraint(op.f("ck_projects_max_running_positive"), type_="check")
        batch.drop_constraint(op.f("ck_projects_share_weight_positive"), type_="check")
        batch.drop_column("share_pass")
        batch.drop_column("max_running_shards")
        batch.drop_column("share_weight")
    with op.batch_alter_table("renders") as batch:
        batch.drop_column("device_kind")
        batch.drop_column("device_s")
