"""analytics: conversion rates. Per content sequence: the leads that first engaged with a sequence by day,
journey and segment, and the days to their first win after it (with the lead's segment on each touch). Per
lifecycle stage: each change under the day and segment of the lead's arrival at the stage it left (with the
lead's segment on arriving at its current stage)

Revision ID: analytics_0007_rates
Revises: analytics_0006_partitions

All of it is derived from the facts record: the fold version changes with it, so the service rebuilds every
derived table from the record at start.
"""

import sqlalchemy as sa
from alembic import op

revision = "analytics_0007_rates"
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
    op.add_column("analytics_leads", sa.Column("segment", sa.String(64), nullable=False, server_default=""))
    op.create_table(
        "analytics_lifecycle_cohorts",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("from_stage", sa.String(64), primary_key=True),
        sa.Column("to_stage", sa.String(64), primary_key=True),
        sa.Column("segment", sa.String(64), primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("analytics_lifecycle_cohorts")
    with op.batch_alter_table("analytics_leads") as batch:
        batch.drop_column("segment")
    op.drop_table("analytics_sequence_rates")
    with op.batch_alter_table("analytics_touches") as batch:
        batch.drop_column("segment")
