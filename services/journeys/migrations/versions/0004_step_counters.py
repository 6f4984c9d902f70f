"""journeys: step counters (records counted by journey, UTC day, step, measure and reason, kept in the
transaction that writes the records) and the meta table saying which derivation made them; live
enrolments indexed by (journey, status, step) for "waiting now" per step

Revision ID: journeys_0004_step_counters
Revises: journeys_0003_counted

The counters are derived from the record: the service finds no `counters_version` in `journeys_meta`
at start and builds them from the step runs, transitions and engagements already there.
"""

import sqlalchemy as sa
from alembic import op

revision = "journeys_0004_step_counters"
down_revision = "journeys_0003_counted"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journeys_step_counts",
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("measure", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("journey", "day", "step", "measure", "reason"),
    )
    op.create_table(
        "journeys_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_journeys_enrollments_steps", "journeys_enrollments", ["journey", "status", "step"])


def downgrade() -> None:
    op.drop_index("ix_journeys_enrollments_steps", table_name="journeys_enrollments")
    op.drop_table("journeys_meta")
    op.drop_table("journeys_step_counts")
