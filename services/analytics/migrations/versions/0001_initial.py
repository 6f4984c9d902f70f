"""analytics: the read model (facts record, state and aggregates)

Revision ID: analytics_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "analytics_0001"
down_revision = None
branch_labels = None
depends_on = None

D = 64


def _dims(*names: str, width: int = D) -> list[sa.Column]:
    return [sa.Column(n, sa.String(128 if n == "template" else width), primary_key=True) for n in names]


def upgrade() -> None:
    op.create_table(
        "analytics_facts",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(200), nullable=False, unique=True),
        sa.Column("lead_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_table(
        "analytics_messages",
        sa.Column("message_id", sa.String(128), primary_key=True),
        *[sa.Column(n, sa.Boolean, nullable=False) for n in ("sent", "opened", "clicked", "bounced")],
    )
    op.create_table(
        "analytics_engagement",
        sa.Column("day", sa.Date, primary_key=True),
        *_dims("journey", "segment", "template", "channel", "topic", "format"),
        *[sa.Column(n, sa.Integer, nullable=False) for n in ("sent", "opened", "clicked", "bounced", "unsubscribed")],
    )
    op.create_table(
        "analytics_nurtured",
        sa.Column("day", sa.Date, primary_key=True),
        *_dims("journey", "segment"),
        sa.Column("lead_id", sa.String(128), primary_key=True),
    )
    op.create_table(
        "analytics_leads",
        sa.Column("lead_id", sa.String(128), primary_key=True),
        sa.Column("stage", sa.String(D), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "analytics_lifecycle",
        sa.Column("day", sa.Date, primary_key=True),
        *_dims("from_stage", "to_stage", "segment"),
        sa.Column("minutes", sa.Integer, primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
    )
    op.create_table(
        "analytics_lead_stages",
        sa.Column("lead_id", sa.String(128), primary_key=True),
        *_dims("journey", "stage"),
        sa.Column("segment", sa.String(D), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("left_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "analytics_stage_counts",
        sa.Column("day", sa.Date, primary_key=True),
        *_dims("journey", "stage", "segment"),
        sa.Column("entered", sa.Integer, nullable=False),
        sa.Column("advanced", sa.Integer, nullable=False),
    )
    op.create_table(
        "analytics_stage_dwell",
        sa.Column("day", sa.Date, primary_key=True),
        *_dims("journey", "stage", "segment"),
        sa.Column("minutes", sa.Integer, primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
    )
    op.create_table(
        "analytics_touches",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("lead_id", sa.String(128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("journey", sa.String(D), nullable=False),
        sa.Column("template", sa.String(128), nullable=False),
        sa.Column("topic", sa.String(D), nullable=False),
        sa.Column("format", sa.String(D), nullable=False),
    )
    op.create_index("ix_analytics_touches_lead_ts", "analytics_touches", ["lead_id", "ts"])
    op.create_table(
        "analytics_won",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("lead_id", sa.String(128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("segment", sa.String(D), nullable=False),
        sa.Column("amount", sa.Float, nullable=False),
    )
    op.create_index("ix_analytics_won_day", "analytics_won", ["day"])


def downgrade() -> None:
    for name in ("analytics_won", "analytics_touches", "analytics_stage_dwell", "analytics_stage_counts",
                 "analytics_lead_stages", "analytics_lifecycle", "analytics_leads", "analytics_nurtured",
                 "analytics_engagement", "analytics_messages", "analytics_facts"):
        op.drop_table(name)
