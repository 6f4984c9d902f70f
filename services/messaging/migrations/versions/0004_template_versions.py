"""messaging: templates as versioned data (drafts, publish, history) and the template version each
message used

Revision ID: messaging_0004_templates
Revises: messaging_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "messaging_0004_templates"
down_revision = "messaging_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messaging_templates",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("published_version", sa.Integer(), nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "messaging_template_versions",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("preheader", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("variants_json", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("published_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("key", "version"),
    )
    with op.batch_alter_table("messaging_messages") as batch:
        batch.add_column(sa.Column("template_version", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("messaging_messages") as batch:
        batch.drop_column("template_version")
    op.drop_table("messaging_template_versions")
    op.drop_table("messaging_templates")
