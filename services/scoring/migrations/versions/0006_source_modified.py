"""scoring: the last source modification applied to a lead (a CRM contact's modified_at and which contact)

Revision ID: scoring_0006
Revises: scoring_0005_tracking
"""

import sqlalchemy as sa
from alembic import op

revision = "scoring_0006"
down_revision = "scoring_0005_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: existing leads have no source time yet, and their next CRM write sets it.
    op.add_column("scoring_leads", sa.Column("source_record", sa.String(length=300), nullable=True))
    op.add_column("scoring_leads", sa.Column("source_modified_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("scoring_leads", "source_modified_at")
    op.drop_column("scoring_leads", "source_record")
