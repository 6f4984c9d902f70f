"""journeys: indexes for the leads behind a count (step runs and engagements by journey, step, lead)

Revision ID: journeys_0003_counted
Revises: journeys_0002
"""

from alembic import op

revision = "journeys_0003_counted"
down_revision = "journeys_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_journeys_step_runs_step_lead", "journeys_step_runs", ["journey", "step", "lead_id"])
    op.create_index("ix_journeys_engagements_step_lead", "journeys_engagements", ["journey", "step", "lead_id"])


def downgrade() -> None:
    op.drop_index("ix_journeys_engagements_step_lead", table_name="journeys_engagements")
    op.drop_index("ix_journeys_step_runs_step_lead", table_name="journeys_step_runs")
