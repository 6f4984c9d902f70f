"""journeys: content-calendar campaigns that have run

Revision ID: journeys_0002
Revises: journeys_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "journeys_0002"
down_revision = "journeys_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journeys_campaigns",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("leads", sa.Integer(), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("journeys_campaigns")
