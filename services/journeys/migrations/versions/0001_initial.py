"""journeys: definitions, lead state, enrolments, step runs, transitions, engagements, processed messages

Revision ID: journeys_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "journeys_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journeys_definitions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key", "version", name="uq_journeys_definitions_key_version"),
    )
    op.create_table(
        "journeys_engagements",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index("ix_journeys_engagements_journey_at", "journeys_engagements", ["journey", "at"], unique=False)
    op.create_table(
        "journeys_enrollments",
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("ekey", sa.String(length=200), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("instance", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=True),
        sa.Column("step", sa.String(length=64), nullable=True),
        sa.Column("due", sa.DateTime(timezone=True), nullable=True),
        sa.Column("token", sa.Integer(), nullable=False),
        sa.Column("side_pending", sa.Integer(), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=64), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("lead_id", "ekey"),
    )
    op.create_index("ix_journeys_enrollments_due", "journeys_enrollments", ["status", "due"], unique=False)
    op.create_index(
        "ix_journeys_enrollments_members",
        "journeys_enrollments",
        ["journey", "status", "stage", "lead_id"],
        unique=False,
    )
    op.create_table(
        "journeys_leads",
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("inactive_due", sa.DateTime(timezone=True), nullable=True),
        sa.Column("inactive_token", sa.Integer(), nullable=False),
        sa.Column("date_timers", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("lead_id"),
    )
    op.create_table(
        "journeys_processed",
        sa.Column("message_id", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
    )
    op.create_table(
        "journeys_step_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dedupe_key", sa.String(length=400), nullable=False),
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("ekey", sa.String(length=200), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("step_type", sa.String(length=16), nullable=False),
        sa.Column("occurrence", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=True),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedupe_key"),
    )
    op.create_index("ix_journeys_step_runs_journey_at", "journeys_step_runs", ["journey", "at"], unique=False)
    op.create_index("ix_journeys_step_runs_lead", "journeys_step_runs", ["lead_id"], unique=False)
    op.create_index("ix_journeys_step_runs_message", "journeys_step_runs", ["message_id"], unique=False)
    op.create_table(
        "journeys_transitions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("ekey", sa.String(length=200), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("step_from", sa.String(length=64), nullable=True),
        sa.Column("step_to", sa.String(length=64), nullable=True),
        sa.Column("stage", sa.String(length=64), nullable=True),
        sa.Column("rule", sa.String(length=128), nullable=True),
        sa.Column("facts", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_journeys_transitions_journey_at", "journeys_transitions", ["journey", "at"], unique=False)
    op.create_index("ix_journeys_transitions_lead", "journeys_transitions", ["lead_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_journeys_transitions_lead", table_name="journeys_transitions")
    op.drop_index("ix_journeys_transitions_journey_at", table_name="journeys_transitions")
    op.drop_table("journeys_transitions")
    op.drop_index("ix_journeys_step_runs_message", table_name="journeys_step_runs")
    op.drop_index("ix_journeys_step_runs_lead", table_name="journeys_step_runs")
    op.drop_index("ix_journeys_step_runs_journey_at", table_name="journeys_step_runs")
    op.drop_table("journeys_step_runs")
    op.drop_table("journeys_processed")
    op.drop_table("journeys_leads")
    op.drop_index("ix_journeys_enrollments_members", table_name="journeys_enrollments")
    op.drop_index("ix_journeys_enrollments_due", table_name="journeys_enrollments")
    op.drop_table("journeys_enrollments")
    op.drop_index("ix_journeys_engagements_journey_at", table_name="journeys_engagements")
    op.drop_table("journeys_engagements")
    op.drop_table("journeys_definitions")
