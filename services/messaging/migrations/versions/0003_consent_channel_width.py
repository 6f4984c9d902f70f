"""messaging: the consent log's channel holds a scope ("email:transactional" is 19 characters; 16 made an
unsubscribe from reminders fail on PostgreSQL, which enforces the width SQLite ignores)

Revision ID: messaging_0003
Revises: messaging_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "messaging_0003"
down_revision = "messaging_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messaging_consent_log") as batch:
        batch.alter_column("channel", existing_type=sa.String(length=16), type_=sa.String(length=64),
                           existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("messaging_consent_log") as batch:
        batch.alter_column("channel", existing_type=sa.String(length=64), type_=sa.String(length=16),
                           existing_nullable=False)
