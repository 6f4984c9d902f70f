"""messaging: a template version may name its own topic and format (PUT /v1/templates/{key}); "" is the
template's default

Revision ID: messaging_0008_topic_format
Revises: messaging_0007_budget_exempt
"""

import sqlalchemy as sa
from alembic import op

revision = "messaging_0008_topic_format"
down_revision = "messaging_0007_budget_exempt"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # server_default '': every version stored before this revision took its template's default, as it still does.
    op.add_column("messaging_template_versions", sa.Column("topic", sa.String(64), nullable=False, server_default=""))
    op.add_column("messaging_template_versions", sa.Column("format", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("messaging_template_versions") as batch:
        batch.drop_column("format")
        batch.drop_column("topic")
