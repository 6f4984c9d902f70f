"""messaging: messages, log, suppressions, consent, tracking, feedback outbox, audiences, inbox

Revision ID: messaging_0001
Revises:
"""

from alembic import op

from services.messaging.tables import metadata

revision = "messaging_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The first revision creates the tables as declared; later revisions use explicit op.* changes.
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
