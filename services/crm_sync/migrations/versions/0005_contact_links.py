"""crm_sync: contact_links, the CRM contact ids that keep resolving to a lead after its link moved

Revision ID: crm_sync_0005
Revises: crm_sync_0004
"""

import sqlalchemy as sa
from alembic import op

revision = "crm_sync_0005"
down_revision = "crm_sync_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crm_sync_contact_links",
        sa.Column("crm", sa.String(length=64), primary_key=True),
        sa.Column("crm_id", sa.String(length=128), primary_key=True),
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(op.f("ix_crm_sync_contact_links_lead_id"), "crm_sync_contact_links", ["lead_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_crm_sync_contact_links_lead_id"), table_name="crm_sync_contact_links")
    op.drop_table("crm_sync_contact_links")
