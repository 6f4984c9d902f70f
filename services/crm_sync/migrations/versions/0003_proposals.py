"""crm_sync: proposals (documents for a prospect, one per CRM deal at most)

Revision ID: crm_sync_0003
Revises: crm_sync_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "crm_sync_0003"
down_revision = "crm_sync_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("crm_sync_proposals",
    sa.Column("id", sa.String(length=64), nullable=False),
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("deal_id", sa.String(length=128), nullable=True),
    sa.Column("plan", sa.String(length=64), nullable=False),
    sa.Column("lines", sa.Text(), nullable=False),
    sa.Column("pathways", sa.Text(), nullable=False),
    sa.Column("total", sa.Float(), nullable=False),
    sa.Column("currency", sa.String(length=3), nullable=False),
    sa.Column("html", sa.Text(), nullable=False),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("task_id", sa.String(length=64), nullable=True),
    sa.Column("message_id", sa.String(length=128), nullable=True),
    sa.Column("requested_by", sa.String(length=64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("valid_until", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("deal_id"),
    )
    op.create_index(op.f("ix_crm_sync_proposals_lead_id"), "crm_sync_proposals", ["lead_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_crm_sync_proposals_lead_id"), table_name="crm_sync_proposals")
    op.drop_table("crm_sync_proposals")
