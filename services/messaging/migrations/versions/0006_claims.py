"""messaging: a queued message's claim names its replica (claimed_by, claimed_at), so replicas share the queue

Revision ID: messaging_0006_claims
Revises: messaging_0005_deliverability
"""

import sqlalchemy as sa
from alembic import op

revision = "messaging_0006_claims"
down_revision = "messaging_0005_deliverability"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messaging_messages", sa.Column("claimed_by", sa.String(length=64), nullable=True))
    op.add_column("messaging_messages", sa.Column("claimed_at", sa.DateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messaging_messages") as batch:
        batch.drop_column("claimed_at")
        batch.drop_column("claimed_by")
