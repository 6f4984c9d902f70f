"""messaging: a segment's copy (label, intro, website recommendations) as versioned data, seeded from
templates/catalog.yaml's `segments:` on the next start (PUT /v1/templates/segments/{segment})

Revision ID: messaging_0010_segment_copy
Revises: messaging_0009_template_cta
"""

import sqlalchemy as sa
from alembic import op

revision = "messaging_0010_segment_copy"
down_revision = "messaging_0009_template_cta"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messaging_segments",
        sa.Column("segment", sa.String(length=64), nullable=False),
        sa.Column("published_version", sa.Integer(), nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("segment"),
    )
    op.create_table(
        "messaging_segment_versions",
        sa.Column("segment", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("intro", sa.Text(), nullable=False),
        sa.Column("recommended_json", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("published_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("segment", "version"),
    )


def downgrade() -> None:
    op.drop_table("messaging_segment_versions")
    op.drop_table("messaging_segments")
