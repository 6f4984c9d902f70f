"""scoring: website visitors (anonymous profiles, their events until merged into a lead)

Revision ID: scoring_0005_tracking
Revises: scoring_0004
"""

import sqlalchemy as sa
from alembic import op

revision = "scoring_0005_tracking"
down_revision = "scoring_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scoring_visitors",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("lead_id", sa.String(length=128), nullable=True),
        sa.Column("profile", sa.Text(), nullable=False),
        sa.Column("answers", sa.Text(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("merged_events", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_scoring_visitors_lead_id", "scoring_visitors", ["lead_id"])
    op.create_table(
        "scoring_visitor_events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("visitor_id", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("properties", sa.Text(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("score_delta", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ux_scoring_visitor_events_client", "scoring_visitor_events", ["visitor_id", "client_id"],
                    unique=True)


def downgrade() -> None:
    op.drop_index("ux_scoring_visitor_events_client", table_name="scoring_visitor_events")
    op.drop_table("scoring_visitor_events")
    op.drop_index("ix_scoring_visitors_lead_id", table_name="scoring_visitors")
    op.drop_table("scoring_visitors")
