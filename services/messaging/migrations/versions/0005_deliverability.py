"""messaging: delivery events (sent, bounces, complaints by sending domain and provider) and provider pauses

Revision ID: messaging_0005_deliverability
Revises: messaging_0004_templates
"""

import sqlalchemy as sa
from alembic import op

revision = "messaging_0005_deliverability"
down_revision = "messaging_0004_templates"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messaging_delivery_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("email_hash", sa.String(64), nullable=False),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
    )
    op.create_index("ix_messaging_delivery_events_at", "messaging_delivery_events", ["at", "kind"])
    op.create_index("ix_messaging_delivery_events_hash", "messaging_delivery_events", ["email_hash", "kind"])
    op.create_table(
        "messaging_provider_pauses",
        sa.Column("provider", sa.String(64), primary_key=True),
        sa.Column("since", sa.DateTime, nullable=False),
        sa.Column("why", sa.Text, nullable=False),
        sa.Column("resumed_at", sa.DateTime, nullable=True),
        sa.Column("resumed_by", sa.String(200), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("messaging_provider_pauses")
    op.drop_index("ix_messaging_delivery_events_hash", "messaging_delivery_events")
    op.drop_index("ix_messaging_delivery_events_at", "messaging_delivery_events")
    op.drop_table("messaging_delivery_events")
