"""analytics: a journey stage entry keeps the bus message that entered the lead into the journey, so an
entry a win caused (the customer journey, entered at the win's instant) is left out of that win's path

Revision ID: analytics_0010_entered_by
Revises: analytics_0009_seqagg

Derived from the facts record: the fold version changes with it, so the service rebuilds every derived table
from the record at start.
"""

import sqlalchemy as sa
from alembic import op

revision = "analytics_0010_entered_by"
down_revision = "analytics_0009_seqagg"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("analytics_lead_stages",
                  sa.Column("entered_by", sa.String(200), nullable=False, server_default=""))


def downgrade() -> None:
    op.drop_column("analytics_lead_stages", "entered_by")
