"""messaging: messages, log, suppressions, consent, tracking, feedback outbox, audiences, inbox

Revision ID: messaging_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "messaging_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Written out, not created from today's tables.py: a migration is a fixed step in history, so
    # later revisions can rename or change types, and upgrading any past database ends at head.
    op.create_table("messaging_ad_suppressions",
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("reason", sa.String(length=64), nullable=False),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint("lead_id")
    )
    op.create_table("messaging_audience_members",
    sa.Column("audience", sa.String(length=128), nullable=False),
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("added_at", sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint("audience", "lead_id")
    )
    op.create_table("messaging_consent_log",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("channel", sa.String(length=16), nullable=False),
    sa.Column("granted", sa.Boolean(), nullable=False),
    sa.Column("source", sa.String(length=64), nullable=False),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.Column("evidence_json", sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_messaging_consent_log_lead_id"), "messaging_consent_log", ["lead_id"], unique=False)
    op.create_table("messaging_feedback",
    sa.Column("key", sa.String(length=200), nullable=False),
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("type", sa.String(length=64), nullable=False),
    sa.Column("properties_json", sa.Text(), nullable=False),
    sa.Column("occurred_at", sa.DateTime(), nullable=False),
    sa.Column("sent", sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint("key")
    )
    op.create_index("ix_messaging_feedback_pending", "messaging_feedback", ["sent"], unique=False)
    op.create_table("messaging_inbox",
    sa.Column("id", sa.String(length=200), nullable=False),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_table("messaging_message_log",
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("message_id", sa.String(length=40), nullable=False),
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.Column("type", sa.String(length=32), nullable=False),
    sa.Column("summary", sa.Text(), nullable=False),
    sa.Column("details_json", sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_messaging_message_log_lead_id"), "messaging_message_log", ["lead_id"], unique=False)
    op.create_table("messaging_messages",
    sa.Column("id", sa.String(length=40), nullable=False),
    sa.Column("dedupe_key", sa.String(length=400), nullable=False),
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("journey", sa.String(length=64), nullable=False),
    sa.Column("journey_version", sa.Integer(), nullable=False),
    sa.Column("step", sa.String(length=64), nullable=False),
    sa.Column("channel", sa.String(length=16), nullable=False),
    sa.Column("template", sa.String(length=128), nullable=False),
    sa.Column("category", sa.String(length=16), nullable=False),
    sa.Column("variant", sa.String(length=16), nullable=False),
    sa.Column("context_json", sa.Text(), nullable=False),
    sa.Column("subject", sa.Text(), nullable=False),
    sa.Column("email_hash", sa.String(length=64), nullable=False),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("due_at", sa.DateTime(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
    sa.Column("sent_at", sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("dedupe_key")
    )
    op.create_index("ix_messaging_messages_due", "messaging_messages", ["status", "due_at"], unique=False)
    op.create_index("ix_messaging_messages_lead", "messaging_messages", ["lead_id", "created_at"], unique=False)
    op.create_index("ix_messaging_messages_template", "messaging_messages", ["template", "variant"], unique=False)
    op.create_table("messaging_suppressions",
    sa.Column("email_hash", sa.String(length=64), nullable=False),
    sa.Column("scope", sa.String(length=16), nullable=False),
    sa.Column("reason", sa.String(length=64), nullable=False),
    sa.Column("source", sa.String(length=64), nullable=False),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint("email_hash", "scope")
    )
    op.create_table("messaging_tracking",
    sa.Column("key", sa.String(length=200), nullable=False),
    sa.Column("message_id", sa.String(length=40), nullable=False),
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("kind", sa.String(length=16), nullable=False),
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.Column("hits", sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint("key")
    )
    op.create_index(op.f("ix_messaging_tracking_lead_id"), "messaging_tracking", ["lead_id"], unique=False)
    op.create_index(op.f("ix_messaging_tracking_message_id"), "messaging_tracking", ["message_id"], unique=False)
    # ### end Alembic commands ###


def downgrade() -> None:
    op.drop_table("messaging_tracking")
    op.drop_table("messaging_suppressions")
    op.drop_table("messaging_messages")
    op.drop_table("messaging_message_log")
    op.drop_table("messaging_inbox")
    op.drop_table("messaging_feedback")
    op.drop_table("messaging_consent_log")
    op.drop_table("messaging_audience_members")
    op.drop_table("messaging_ad_suppressions")
