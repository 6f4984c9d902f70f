"""messaging: a template version may name its call to action's label and page (PUT /v1/templates/{key});
"" is the template's own (its catalog entry's, else "Learn more" and the site root)

Revision ID: messaging_0009_template_cta
Revises: messaging_0008_topic_format
"""

import sqlalchemy as sa
from alembic import op

revision = "messaging_0009_template_cta"
down_revision = "messaging_0008_topic_format"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # server_default '': every version stored before this revision took its template's own, as it still does.
    op.add_column("messaging_template_versions",
                  sa.Column("cta_label", sa.String(64), nullable=False, server_default=""))
    op.add_column("messaging_template_versions",
                  sa.Column("cta_path", sa.String(400), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("messaging_template_versions") as batch:
        batch.drop_column("cta_path")
        batch.drop_column("cta_label")
