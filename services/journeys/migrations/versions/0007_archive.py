"""journeys: archiving a journey (its published version's status becomes `archived`) is recorded as a migration
of kind `archive`, so that with replicas every partition's owner exits its own live leads of the journey

Revision ID: journeys_0007_archive
Revises: journeys_0006_migrations
"""

import sqlalchemy as sa
from alembic import op

revision = "journeys_0007_archive"
down_revision = "journeys_0006_migrations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("journeys_migrations") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="migrate"))


def downgrade() -> None:
    with op.batch_alter_table("journeys_migrations") as batch:
        batch.drop_column("kind")
