"""crm_sync: contact_links, the CRM contact ids that keep resolving to a lead after its link moved;
the change feed's sequence never reuses a number on SQLite

Revision ID: crm_sync_0005
Revises: crm_sync_0004
"""

import sqlalchemy as sa
from alembic import op

revision = "crm_sync_0005"
down_revision = "crm_sync_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crm_sync_contact_links",
        sa.Column("crm", sa.String(length=64), primary_key=True),
        sa.Column("crm_id", sa.String(length=128), primary_key=True),
        sa.Column("lead_id", sa.String(length=128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(op.f("ix_crm_sync_contact_links_lead_id"), "crm_sync_contact_links", ["lead_id"], unique=False)
    if op.get_bind().dialect.name == "sqlite":
        # AUTOINCREMENT (a table rebuilt, rows and numbers kept): SQLite otherwise gives the highest
        # number deleted (an erased lead's changes) to the next change, which a CRM resuming from that
        # cursor never reads. PostgreSQL's sequence never gives a number twice.
        with op.batch_alter_table("crm_sync_changes", recreate="always",
                                  table_kwargs={"sqlite_autoincrement": True}) as batch:
            batch.alter_column("seq", existing_type=sa.Integer(), autoincrement=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("crm_sync_changes", recreate="always",
                                  table_kwargs={"sqlite_autoincrement": False}) as batch:
            batch.alter_column("seq", existing_type=sa.Integer(), autoincrement=True)
    op.drop_index(op.f("ix_crm_sync_contact_links_lead_id"), table_name="crm_sync_contact_links")
    op.drop_table("crm_sync_contact_links")
