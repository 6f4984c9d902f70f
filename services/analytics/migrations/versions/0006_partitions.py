"""analytics: the fencing epoch of each partition (nurture.partitions), so a replica that lost a partition
(its lease ran out while it was paused) cannot commit that partition's work

Revision ID: analytics_0006_partitions
Revises: analytics_0005_score_now

Rows are made by the first replica that takes each partition (their number follows the settings).
"""

import sqlalchemy as sa
from alembic import op

revision = "analytics_0006_partitions"
down_revision = "analytics_0005_score_now"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "analytics_partitions",
        sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("analytics_partitions")
