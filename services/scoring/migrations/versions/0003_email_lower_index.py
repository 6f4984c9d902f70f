"""scoring: index on lower(email), for the case-insensitive email match and uniqueness check

Revision ID: scoring_0003
Revises: scoring_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "scoring_0003"
down_revision = "scoring_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database created by 0001 from today's tables.py has the index already.
    op.create_index("ix_scoring_leads_email_lower", "scoring_leads", [sa.text("lower(email)")], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_scoring_leads_email_lower", table_name="scoring_leads")
