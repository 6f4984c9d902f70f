"""journeys: indexes for counting the funnel in SQL and the leads behind a count (step runs by journey, step,
status, lead; engagements by journey, step, type, lead; transitions by journey, type, step, rule)

Revision ID: journeys_0003_counted
Revises: journeys_0002
"""

from alembic import op

revision = "journeys_0003_counted"
down_revision = "journeys_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_journeys_step_runs_step_lead", "journeys_step_runs", ["journey", "step", "status", "lead_id"])
    op.create_index("ix_journeys_engagements_step_lead", "journeys_engagements", ["journey", "step", "type", "lead_id"])
    op.create_index("ix_journeys_transitions_journey_type", "journeys_transitions",
                    ["journey", "type", "step_from", "rule"])


def downgrade() -> None:
    op.drop_index("ix_journeys_transitions_journey_type", table_name="journeys_transitions")
    op.drop_index("ix_journeys_engagements_step_lead", table_name="journeys_engagements")
    op.drop_index("ix_journeys_step_runs_step_lead", table_name="journeys_step_runs")
