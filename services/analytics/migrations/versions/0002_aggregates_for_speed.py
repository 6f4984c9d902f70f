"""analytics: aggregates that answer reports without scanning (sends per journey and channel; engagement per
stage and segment;
day; dwell histograms in coarse bands by day, week and month), and the fold version

Revision ID: analytics_0002_reach_bands
Revises: analytics_0001

The new aggregates are derived from the facts record: the service sees that the fold version in
`analytics_meta` differs from its own at start and rebuilds every derived table from the record.
"""

import sqlalchemy as sa
from alembic import op

revision = "analytics_0002_reach_bands"
down_revision = "analytics_0001"
branch_labels = None
depends_on = None

D = 64


def _bands(name: str, *dims: str) -> None:
    op.create_table(
        name,
        sa.Column("grain", sa.String(1), primary_key=True),
        sa.Column("start", sa.Date, primary_key=True),
        *[sa.Column(n, sa.String(D), primary_key=True) for n in dims],
        sa.Column("band", sa.Integer, primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
    )


def upgrade() -> None:
    op.create_index("ix_analytics_nurtured_lead", "analytics_nurtured", ["lead_id"])
    op.create_table(
        "analytics_stage_engagement",
        sa.Column("day", sa.Date, primary_key=True),
        *[sa.Column(n, sa.String(D), primary_key=True) for n in ("journey", "stage", "segment")],
        *[sa.Column(n, sa.Integer, nullable=False) for n in ("sent", "opened", "clicked", "bounced", "unsubscribed")],
    )
    op.create_table(
        "analytics_sends",
        sa.Column("day", sa.Date, primary_key=True),
        *[sa.Column(n, sa.String(D), primary_key=True) for n in ("journey", "segment", "channel")],
        sa.Column("sent", sa.Integer, nullable=False),
    )
    op.create_table(
        "analytics_reach",
        sa.Column("scope", sa.String(2), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("journey", sa.String(D), primary_key=True),
        sa.Column("segment", sa.String(D), primary_key=True),
        sa.Column("prev_day", sa.Date, primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
    )
    for table in ("analytics_lifecycle", "analytics_stage_dwell"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("band", sa.Integer, nullable=False, server_default="0"))
    for table in ("analytics_lead_stages", "analytics_won"):  # the lead's score then: score progression
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("score", sa.Integer, nullable=True))
    op.create_index("ix_analytics_lifecycle_band", "analytics_lifecycle", ["from_stage", "to_stage", "band", "day"])
    op.create_index("ix_analytics_stage_dwell_band", "analytics_stage_dwell", ["journey", "stage", "band", "day"])
    _bands("analytics_lifecycle_bands", "from_stage", "to_stage", "segment")
    _bands("analytics_stage_dwell_bands", "journey", "stage", "segment")
    op.create_table(
        "analytics_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    for name in ("analytics_meta", "analytics_stage_dwell_bands", "analytics_lifecycle_bands", "analytics_reach",
                 "analytics_sends", "analytics_stage_engagement"):
        op.drop_table(name)
    op.drop_index("ix_analytics_stage_dwell_band", "analytics_stage_dwell")
    op.drop_index("ix_analytics_lifecycle_band", "analytics_lifecycle")
    for table in ("analytics_lifecycle", "analytics_stage_dwell"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("band")
    for table in ("analytics_lead_stages", "analytics_won"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("score")
    op.drop_index("ix_analytics_nurtured_lead", "analytics_nurtured")
