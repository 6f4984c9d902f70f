"""analytics: each won deal's content sequence per unit, length and journey, with the days from its first
step to the win: the sequences report sums these rows in range instead of reading every deal's touches;
sequences' conversion rates by day, ISO week and month (a range reads a few periods, not every day)

Revision ID: analytics_0009_seqagg
Revises: analytics_0008_subbands

Derived from the facts record: the fold version changes with it, so the service rebuilds every derived table
from the record at start.
"""

import sqlalchemy as sa
from alembic import op

revision = "analytics_0009_seqagg"
down_revision = "analytics_0008_subbands"
branch_labels = None
depends_on = None

D = 64


def _rates(*period: sa.Column) -> None:
    op.create_table(
        "analytics_sequence_rates",
        sa.Column("unit", sa.String(16), primary_key=True),
        sa.Column("length", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("journey", sa.String(D), primary_key=True),
        *period,
        sa.Column("segment", sa.String(D), primary_key=True),
        sa.Column("sequence", sa.String(400), primary_key=True),
        sa.Column("lag", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("leads", sa.Integer, nullable=False),
    )


def upgrade() -> None:
    op.drop_table("analytics_sequence_rates")
    _rates(sa.Column("start", sa.Date, primary_key=True), sa.Column("grain", sa.String(1), primary_key=True))
    op.create_table(
        "analytics_deal_sequences",
        sa.Column("deal", sa.String(200), primary_key=True),
        sa.Column("unit", sa.String(16), primary_key=True),
        sa.Column("length", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("journey", sa.String(D), primary_key=True),
        sa.Column("lead_id", sa.String(128), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("segment", sa.String(D), nullable=False),
        sa.Column("amount", sa.Float, nullable=False),
        sa.Column("sequence", sa.String(400), nullable=False),
        sa.Column("lag", sa.Integer, nullable=False),
    )
    op.create_index("ix_analytics_deal_sequences_read", "analytics_deal_sequences",
                    ["unit", "length", "journey", "day", "segment", "lag", "sequence", "amount"])
    op.create_index("ix_analytics_deal_sequences_lead", "analytics_deal_sequences", ["lead_id"])


def downgrade() -> None:
    op.drop_table("analytics_deal_sequences")
    op.drop_table("analytics_sequence_rates")
    _rates(sa.Column("day", sa.Date, primary_key=True))
