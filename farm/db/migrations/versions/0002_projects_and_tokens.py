"""Projects, API tokens and password accounts; characters and jobs belong to a project.

Why: the dashboard and the JSON API open the farm to several studio teams, and one team must
not see or touch another's characters and jobs. Every character and job now names its project,
and whoever calls the farm does so with a token or an account of one project and one role
(viewer, artist, admin). Token secrets are kept only as sha256 (they are long and random),
passwords only as scrypt hashes.

Rows made before this revision go to the project named "default", which this revision creates;
the column is added nullable, filled, then made required, so the upgrade works on a farm that
already has jobs. Downgrade drops the columns and the three tables: projects, tokens and
accounts are lost, characters and jobs stay.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from farm.db.types import sql_now

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROLES = ("viewer", "artist", "admin")
_OWNED = ("characters", "jobs")  # the tables whose rows belong to a project


def _timestamp(name: str, **kw: object) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), **kw)


def _row_times() -> list[sa.Column]:
    return [
        _timestamp("created", server_default=sql_now(), nullable=False),
        _timestamp("updated", server_default=sql_now(), nullable=False),
    ]


def _role(table: str) -> list[sa.Column | sa.CheckConstraint]:
    values = ", ".join(f"'{role}'" for role in _ROLES)
    return [
        sa.Column("role", sa.String(20), nullable=False),
        sa.CheckConstraint(f"role IN ({values})", name=op.f(f"ck_{table}_role")),
    ]


def _project_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["project_id"], ["projects.id"], name=op.f(f"fk_{table}_project_id_projects")
    )


def upgrade() -> None:
    projects = op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(80), nullable=False),
        *_row_times(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("name", name=op.f("uq_projects_name")),
    )
    op.bulk_insert(projects, [{"name": "default"}])

    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(80), nullable=False),
        *_role("api_tokens"),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        _timestamp("last_used", nullable=True),
        _timestamp("revoked", nullable=True),
        *_row_times(),
        _project_fk("api_tokens"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("secret_sha256", name=op.f("uq_api_tokens_secret_sha256")),
    )
    op.create_index(op.f("ix_api_tokens_project_id"), "api_tokens", ["project_id"])

    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(80), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        *_role("accounts"),
        _timestamp("last_login", nullable=True),
        _timestamp("disabled", nullable=True),
        *_row_times(),
        _project_fk("accounts"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("username", name=op.f("uq_accounts_username")),
    )
    op.create_index(op.f("ix_accounts_project_id"), "accounts", ["project_id"])

    default_project = sa.select(projects.c.id).where(projects.c.name == "default")
    for table in _OWNED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("project_id", sa.Integer(), nullable=True))
        owned = sa.table(table, sa.column("project_id", sa.Integer()))
        op.execute(owned.update().values(project_id=default_project.scalar_subquery()))
        with op.batch_alter_table(table) as batch:
            batch.alter_column("project_id", existing_type=sa.Integer(), nullable=False)
            batch.create_foreign_key(
                op.f(f"fk_{table}_project_id_projects"), "projects", ["project_id"], ["id"]
            )
    op.create_index(op.f("ix_characters_project_id"), "characters", ["project_id"])
    op.create_index(op.f("ix_jobs_project_id_created"), "jobs", ["project_id", "created"])


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_project_id_created"), table_name="jobs")
    op.drop_index(op.f("ix_characters_project_id"), table_name="characters")
    for table in _OWNED:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(f"fk_{table}_project_id_projects"), type_="foreignkey")
            batch.drop_column("project_id")
    for table in ("accounts", "api_tokens", "projects"):
        op.drop_table(table)
