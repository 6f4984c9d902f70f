"""journeys: the publishes with `migrate` and the partitions each was carried out for, so that with replicas
every partition's owner moves its own leads (their writes fenced) instead of the replica that took the call

Revision ID: journeys_0006_migrations
Revises: journeys_0005_partitions
"""

import sqlalchemy as sa
from alembic import op

revision = "journeys_0006_migrations"
down_revision = "journeys_0005_partitions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journeys_migrations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("journey", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("mapping", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "journeys_migrations_done",
        sa.Column("migration_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("journeys_migrations_done")
    op.drop_table("journeys_migrations")
