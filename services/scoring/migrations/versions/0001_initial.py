"""scoring: leads, events, score changes, outbox, audit

Revision ID: scoring_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "scoring_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Written out, not created from today's tables.py: a migration is a fixed step in history, so
    # later revisions can rename or change types, and upgrading any past database ends at head.
    # The outbox's `trace` column (0002) and the lower(email) index (0003) come in their own revisions.
    op.create_table("scoring_audit",
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("action", sa.String(length=64), nullable=False),
    sa.Column("source", sa.String(length=64), nullable=False),
    sa.Column("details", sa.Text(), nullable=False),
    sa.Column("erased", sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_scoring_audit_lead_id"), "scoring_audit", ["lead_id"], unique=False)
    op.create_table("scoring_events",
    sa.Column("id", sa.String(length=40), nullable=False),
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("type", sa.String(length=64), nullable=False),
    sa.Column("properties", sa.Text(), nullable=False),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("idempotency_key", sa.String(length=200), nullable=True),
    sa.Column("source", sa.String(length=64), nullable=False),
    sa.Column("score_delta", sa.Integer(), nullable=False),
    sa.Column("signals", sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("idempotency_key")
    )
    op.create_index("ix_scoring_events_lead", "scoring_events", ["lead_id", "occurred_at"], unique=False)
    op.create_table("scoring_leads",
    sa.Column("id", sa.String(length=128), nullable=False),
    sa.Column("email", sa.String(length=320), nullable=True),
    sa.Column("first_name", sa.String(length=200), nullable=True),
    sa.Column("last_name", sa.String(length=200), nullable=True),
    sa.Column("segment", sa.String(length=64), nullable=True),
    sa.Column("timezone", sa.String(length=64), nullable=True),
    sa.Column("locale", sa.String(length=16), nullable=True),
    sa.Column("attributes", sa.Text(), nullable=False),
    sa.Column("consent", sa.Text(), nullable=False),
    sa.Column("score", sa.Integer(), nullable=False),
    sa.Column("grade", sa.String(length=2), nullable=False),
    sa.Column("lifecycle_stage", sa.String(length=32), nullable=False),
    sa.Column("counters", sa.Text(), nullable=False),
    sa.Column("recent", sa.Text(), nullable=False),
    sa.Column("interests", sa.Text(), nullable=False),
    sa.Column("crm_id", sa.String(length=128), nullable=True),
    sa.Column("version", sa.BigInteger(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_engaged_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("lapse_due_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_scoring_leads_crm_id"), "scoring_leads", ["crm_id"], unique=False)
    op.create_index(op.f("ix_scoring_leads_email"), "scoring_leads", ["email"], unique=False)
    op.create_index(op.f("ix_scoring_leads_lapse_due_at"), "scoring_leads", ["lapse_due_at"], unique=False)
    op.create_index(op.f("ix_scoring_leads_lifecycle_stage"), "scoring_leads", ["lifecycle_stage"], unique=False)
    op.create_index(op.f("ix_scoring_leads_score"), "scoring_leads", ["score"], unique=False)
    op.create_index(op.f("ix_scoring_leads_segment"), "scoring_leads", ["segment"], unique=False)
    op.create_table("scoring_outbox",
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("payload", sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint("seq")
    )
    op.create_table("scoring_score_changes",
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
    sa.Column("lead_id", sa.String(length=128), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("delta", sa.Integer(), nullable=False),
    sa.Column("score_after", sa.Integer(), nullable=False),
    sa.Column("rule", sa.String(length=128), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("event_id", sa.String(length=40), nullable=True),
    sa.Column("model_version", sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index("ix_scoring_score_changes_lead", "scoring_score_changes", ["lead_id", "id"], unique=False)
    # ### end Alembic commands ###


def downgrade() -> None:
    op.drop_table("scoring_score_changes")
    op.drop_table("scoring_outbox")
    op.drop_table("scoring_leads")
    op.drop_table("scoring_events")
    op.drop_table("scoring_audit")
