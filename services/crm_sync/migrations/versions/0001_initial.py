"""crm_sync: lead links and sync state, inbound objects, change feed, outbound queue, tasks, timeline

Revision ID: crm_sync_0001
Revises:
"""

from alembic import op

from services.crm_sync.tables import metadata

revision = "crm_sync_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The first revision creates the tables as declared; later revisions use explicit op.* changes.
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
