"""analytics: each won deal's journey entries before the win (time to conversion, score progression and
value by path read them by deal), won deals by lead, and the dwell histograms' band index in order of minutes

Revision ID: analytics_0004_won_entries
Revises: analytics_0003_deliverability

`analytics_won_entries` is derived from the facts record: the fold version changes with it, so the service
rebuilds every derived table from the record at start.
"""

import sqlalchemy as sa
from alembic import op

revision = "analytics_0004_won_entries"
down_revision = "analytics_0003_deliverability"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "analytics_won_entries",
        sa.Column("deal", sa.String(200), primary_key=True),
        sa.Column("journey", sa.String(64), primary_key=True),
        sa.Column("lead_id", sa.String(128), nullable=False),
        sa.Column("entered_ts", sa.BigInteger, nullable=False),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("score", sa.Integer, nullable=True),
    )
    op.create_index("ix_analytics_won_lead", "analytics_won", ["lead_id"])
    op.drop_index("ix_analytics_stage_dwell_band", "analytics_stage_dwell")
    op.drop_index("ix_analytics_lifecycle_band", "analytics_lifecycle")
    op.create_index("ix_analytics_stage_dwell_minutes", "analytics_stage_dwell",
                    ["journey", "stage", "band", "minutes", "day", "segment", "n"])
    op.create_index("ix_analytics_lifecycle_minutes", "analytics_lifecycle",
                    ["from_stage", "to_stage", "band", "minutes", "day", "segment", "n"])


def downgrade() -> None:
    op.drop_index("ix_analytics_lifecycle_minutes", "analytics_lifecycle")
    op.drop_index("ix_analytics_stage_dwell_minutes", "analytics_stage_dwell")
    op.create_index("ix_analytics_lifecycle_band", "analytics_lifecycle", ["from_stage", "to_stage", "band", "day"])
    op.create_index("ix_analytics_stage_dwell_band", "analytics_stage_dwell", ["journey", "stage", "band", "day"])
    op.drop_index("ix_analytics_won_lead", "analytics_won")
    op.drop_table("analytics_won_entries")
