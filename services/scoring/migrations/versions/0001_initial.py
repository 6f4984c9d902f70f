"""scoring: leads, events, score changes, outbox, audit

Revision ID: scoring_0001
Revises:
"""

from alembic import op

from services.scoring.tables import metadata

revision = "scoring_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The first revision creates the tables as declared; later revisions use explicit op.* changes.
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
