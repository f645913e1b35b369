"""Identity QC on renders: how often a render was made again, and with which seed.

Why: a job may ask for a minimum face similarity; renders under it are rendered again with new
seeds and the best is kept. The job page must show which renders were retried, and the kept
image's seed must stay recorded to make it again. `face_similarity` itself exists since 0001.
Downgrade drops both columns (the record of retries is lost, the renders stay).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("renders") as batch:
        batch.add_column(
            sa.Column("qc_retries", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(sa.Column("qc_seed", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("renders") as batch:
        batch.drop_column("qc_seed")
        batch.drop_column("qc_retries")
