"""analytics: conversion rate per content sequence (the leads that first engaged with a sequence by day,
journey, segment, and the days to their first win after it), and the lead's segment on each touch

Revision ID: analytics_0007_sequence_rates
Revises: analytics_0006_partitions

Both are derived from the facts record: the fold version changes with them, so the service rebuilds every
derived table from the record at start (touches then carry their segment).
"""

import sqlalchemy as sa
from alembic import op

revision = "analytics_0007_sequence_rates"
down_revision = "analytics_0006_partitions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("analytics_touches", sa.Column("segment", sa.String(64), nullable=False, server_default=""))
    op.create_table(
        "analytics_sequence_rates",
        sa.Column("unit", sa.String(16), primary_key=True),
        sa.Column("length", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("journey", sa.String(64), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("segment", sa.String(64), primary_key=True),
        sa.Column("sequence", sa.String(400), primary_key=True),
        sa.Column("lag", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("leads", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("analytics_sequence_rates")
    op.drop_column("analytics_touches", "segment")
