"""analytics: deliverability by day, sending domain and mailbox provider, and what each message counted for

Revision ID: analytics_0003_deliverability
Revises: analytics_0002_reach_bands

Derived from the facts record like every aggregate: the fold version changes with it, so the service
rebuilds the derived tables at start.
"""

import sqlalchemy as sa
from alembic import op

revision = "analytics_0003_deliverability"
down_revision = "analytics_0002_reach_bands"
branch_labels = None
depends_on = None

D = 64


def upgrade() -> None:
    op.create_table(
        "analytics_deliveries",
        sa.Column("message_id", sa.String(128), primary_key=True),
        *[sa.Column(n, sa.Boolean, nullable=False) for n in ("sent", "delivered", "hard_bounced", "complained")],
    )
    op.create_table(
        "analytics_deliverability",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("domain", sa.String(255), primary_key=True),
        sa.Column("provider", sa.String(D), primary_key=True),
        sa.Column("segment", sa.String(D), primary_key=True),
        sa.Column("journey", sa.String(D), primary_key=True),
        *[sa.Column(n, sa.Integer, nullable=False)
          for n in ("sent", "delivered", "hard_bounced", "soft_bounced", "complaints")],
    )


def downgrade() -> None:
    op.drop_table("analytics_deliverability")
    op.drop_table("analytics_deliveries")
