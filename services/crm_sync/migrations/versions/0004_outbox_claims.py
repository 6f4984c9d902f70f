"""crm_sync: outbox claims name their replica (claimed_by, claimed_at), so replicas share the queue

Revision ID: crm_sync_0004
Revises: crm_sync_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "crm_sync_0004"
down_revision = "crm_sync_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("crm_sync_outbox", sa.Column("claimed_by", sa.String(length=64), nullable=True))
    op.add_column("crm_sync_outbox", sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("crm_sync_outbox") as batch:
        batch.drop_column("claimed_at")
        batch.drop_column("claimed_by")
