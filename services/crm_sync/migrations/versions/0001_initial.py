"""crm_sync: lead links and sync state, inbound objects, change feed, outbound queue, tasks, timeline

Revision ID: crm_sync_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "crm_sync_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Written out, not created from today's tables.py: a migration is a fixed step in history, so
    # later revisions can rename or change types, and upgrading any past database ends at head.
    # The lower(email) index comes in revision 0002.
    op.create_table("crm_sync_changes",
    sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("crm_id", sa.String(length=128), nullable=True),
    sa.Column("changed", sa.Text(), nullable=False),
    sa.Column("data", sa.Text(), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("seq")
    )
    op.create_index(op.f("ix_crm_sync_changes_lead_id"), "crm_sync_changes", ["lead_id"], unique=False)
    op.create_table("crm_sync_inbound",
    sa.Column("crm", sa.String(length=64), nullable=False),
    sa.Column("kind", sa.String(length=16), nullable=False),
    sa.Column("object_id", sa.String(length=128), nullable=False),
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("modified_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("state", sa.String(length=64), nullable=False),
    sa.Column("event_id", sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint("crm", "kind", "object_id")
    )
    op.create_index(op.f("ix_crm_sync_inbound_lead_id"), "crm_sync_inbound", ["lead_id"], unique=False)
    op.create_table("crm_sync_leads",
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("crm", sa.String(length=64), nullable=True),
    sa.Column("crm_id", sa.String(length=128), nullable=True),
    sa.Column("email", sa.String(length=320), nullable=True),
    sa.Column("contact_modified_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("inbound_hash", sa.String(length=64), nullable=True),
    sa.Column("version", sa.BigInteger(), nullable=False),
    sa.Column("snapshot", sa.Text(), nullable=False),
    sa.Column("fields", sa.Text(), nullable=False),
    sa.Column("projection", sa.Text(), nullable=False),
    sa.Column("journeys", sa.Text(), nullable=False),
    sa.Column("owner", sa.String(length=320), nullable=True),
    sa.Column("team", sa.String(length=64), nullable=True),
    sa.Column("meeting_link", sa.String(length=500), nullable=True),
    sa.Column("pushed_hash", sa.String(length=64), nullable=True),
    sa.Column("converted_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("lead_id")
    )
    op.create_index("crm_sync_leads_crm_id", "crm_sync_leads", ["crm", "crm_id"], unique=True)
    op.create_index(op.f("ix_crm_sync_leads_email"), "crm_sync_leads", ["email"], unique=False)
    op.create_table("crm_sync_outbox",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("op", sa.String(length=16), nullable=False),
    sa.Column("ref", sa.String(length=128), nullable=False),
    sa.Column("payload", sa.Text(), nullable=False),
    sa.Column("status", sa.String(length=8), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index("crm_sync_outbox_due", "crm_sync_outbox", ["status", "due_at"], unique=False)
    op.create_index("crm_sync_outbox_lead", "crm_sync_outbox", ["lead_id", "op", "status"], unique=False)
    op.create_table("crm_sync_round_robin",
    sa.Column("team", sa.String(length=64), nullable=False),
    sa.Column("next", sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint("team")
    )
    op.create_table("crm_sync_tasks",
    sa.Column("id", sa.String(length=64), nullable=False),
    sa.Column("dedupe_key", sa.String(length=300), nullable=False),
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("kind", sa.String(length=32), nullable=False),
    sa.Column("title", sa.String(length=300), nullable=False),
    sa.Column("priority", sa.String(length=16), nullable=False),
    sa.Column("owner", sa.String(length=320), nullable=True),
    sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("details", sa.Text(), nullable=False),
    sa.Column("document", sa.Text(), nullable=False),
    sa.Column("rule", sa.String(length=128), nullable=False),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("remote_id", sa.String(length=64), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("dedupe_key")
    )
    op.create_index(op.f("ix_crm_sync_tasks_lead_id"), "crm_sync_tasks", ["lead_id"], unique=False)
    op.create_table("crm_sync_timeline",
    sa.Column("id", sa.String(length=64), nullable=False),
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("type", sa.String(length=64), nullable=False),
    sa.Column("summary", sa.Text(), nullable=False),
    sa.Column("details", sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index("crm_sync_timeline_lead", "crm_sync_timeline", ["lead_id", "at"], unique=False)
    # ### end Alembic commands ###


def downgrade() -> None:
    op.drop_table("crm_sync_timeline")
    op.drop_table("crm_sync_tasks")
    op.drop_table("crm_sync_round_robin")
    op.drop_table("crm_sync_outbox")
    op.drop_table("crm_sync_leads")
    op.drop_table("crm_sync_inbound")
    op.drop_table("crm_sync_changes")
