"""crm_sync: index on lower(email), the case-insensitive contact match

Revision ID: crm_sync_0002
Revises: crm_sync_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "crm_sync_0002"
down_revision = "crm_sync_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database created by 0001 from today's tables.py has the index already.
    op.create_index("crm_sync_leads_email_lower", "crm_sync_leads", [sa.text("lower(email)")], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("crm_sync_leads_email_lower", table_name="crm_sync_leads")
