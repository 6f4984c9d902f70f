"""analytics: each lead's score now and whether it converted, and the not-yet-converted leads' scores at
their first journey entry and now, by the day and segment of that entry (score progression of leads that
have not converted)

Revision ID: analytics_0005_score_now
Revises: analytics_0004_won_entries

Both tables are derived from the facts record: the fold version changes with them, so the service rebuilds
every derived table from the record at start.
"""

import sqlalchemy as sa
from alembic import op

revision = "analytics_0005_score_now"
down_revision = "analytics_0004_won_entries"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "analytics_lead_scores",
        sa.Column("lead_id", sa.String(128), primary_key=True),
        sa.Column("score", sa.Integer, nullable=True),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("won", sa.Boolean, nullable=False),
    )
    op.create_table(
        "analytics_score_now",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("journey", sa.String(64), primary_key=True),
        sa.Column("segment", sa.String(64), primary_key=True),
        sa.Column("leads", sa.Integer, nullable=False),
        sa.Column("entry_sum", sa.BigInteger, nullable=False),
        sa.Column("now_sum", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("analytics_score_now")
    op.drop_table("analytics_lead_scores")
