"""messaging: a message keeps its journey step's `budget: exempt` (budget_exempt), which the caps and gap honour

Revision ID: messaging_0007_budget_exempt
Revises: messaging_0006_claims
"""

import sqlalchemy as sa
from alembic import op

revision = "messaging_0007_budget_exempt"
down_revision = "messaging_0006_claims"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # server_default false: every message queued before this revision was counted against the caps.
    op.add_column("messaging_messages", sa.Column("budget_exempt", sa.Boolean, nullable=False,
                                                  server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("messaging_messages") as batch:
        batch.drop_column("budget_exempt")
