"""analytics: dwell histograms (journey stages, lifecycle stages) in sub-bands, a 32nd of each band, by day, ISO
week and month: a percentile narrows its located band to one sub-band before reading whole minutes

Revision ID: analytics_0008_subbands
Revises: analytics_0007_rates

Derived from the facts record: the fold version changes with it, so the service rebuilds every derived table
from the record at start.
"""

import sqlalchemy as sa
from alembic import op

revision = "analytics_0008_subbands"
down_revision = "analytics_0007_rates"
branch_labels = None
depends_on = None

D = 64


def _subbands(name: str, a: str, b: str) -> None:
    op.create_table(
        name,
        sa.Column(a, sa.String(D), primary_key=True),
        sa.Column(b, sa.String(D), primary_key=True),
        sa.Column("band", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("grain", sa.String(1), primary_key=True),
        sa.Column("start", sa.Date, primary_key=True),
        sa.Column("segment", sa.String(D), primary_key=True),
        sa.Column("sub", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("n", sa.Integer, nullable=False),
    )


def upgrade() -> None:
    _subbands("analytics_lifecycle_subbands", "from_stage", "to_stage")
    _subbands("analytics_stage_dwell_subbands", "journey", "stage")


def downgrade() -> None:
    op.drop_table("analytics_stage_dwell_subbands")
    op.drop_table("analytics_lifecycle_subbands")
