"""API tokens that expire, and a session generation that lets a logout end a saved cookie.

Why: a token made for a contractor or a CI run lived until someone remembered to revoke it;
`expires` lets it end by itself (empty: until revoked, as every existing token stays). A
dashboard session was only a signed cookie, so after a logout a copy of the cookie kept
working for its whole lifetime (12 hours); `session_generation` on tokens and accounts is
stored in the session when it opens and bumped by a logout, and a session whose number no
longer matches has ended. Existing rows start at 0, and existing cookies, which carry no
number, are ended (their people log in again once). Downgrade drops the three columns:
tokens stop expiring and logouts end only the browser's own cookie again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _generation() -> sa.Column:
    return sa.Column(
        "session_generation", sa.Integer(), server_default=sa.text("0"), nullable=False
    )


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("expires", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(_generation())
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(_generation())


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("session_generation")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("session_generation")
        batch.drop_column("expires")
