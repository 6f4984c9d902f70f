"""journeys: the fencing epoch of each partition (nurture.partitions), so a replica that lost a partition
(its lease ran out while it was paused) cannot commit that partition's work

Revision ID: journeys_0005_partitions
Revises: journeys_0004_step_counters

Rows are made by the first replica that takes each partition (their number follows the settings).
"""

import sqlalchemy as sa
from alembic import op

revision = "journeys_0005_partitions"
down_revision = "journeys_0004_step_counters"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journeys_partitions",
        sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("journeys_partitions")
