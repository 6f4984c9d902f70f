"""The scoring service's tables (SQLAlchemy Core). Migrations in migrations/ create exactly these."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
)

metadata = MetaData()

leads = Table(
    "scoring_leads",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("email", String(320), nullable=True, index=True),
    Column("first_name", String(200), nullable=True),
    Column("last_name", String(200), nullable=True),
    Column("segment", String(64), nullable=True, index=True),
    Column("timezone", String(64), nullable=True),
    Column("locale", String(35), nullable=True),  # BCP 47: MAX_LENGTHS["locale"]
    Column("attributes", Text, nullable=False, default="{}"),
    Column("consent", Text, nullable=False, default="{}"),
    Column("score", Integer, nullable=False, default=0, index=True),
    Column("grade", String(2), nullable=False, default="D"),
    Column("lifecycle_stage", String(32), nullable=False, default="subscriber", index=True),
    Column("counters", Text, nullable=False, default="{}"),
    Column("recent", Text, nullable=False, default="{}"),
    Column("interests", Text, nullable=False, default="{}"),
    Column("crm_id", String(128), nullable=True, index=True),
    Column("version", BigInteger, nullable=False, default=1),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("last_engaged_at", DateTime(timezone=True), nullable=True),
    # When the lead next goes quiet (engagement_lapsed + decay); the Settle/timer sweep reads this index.
    Column("lapse_due_at", DateTime(timezone=True), nullable=True, index=True),
    # The last modification of a source record (a CRM contact, `UpsertLeadRequest.source_record`)
    # applied to the lead: an older one of the same record is refused as stale.
    Column("source_record", String(300), nullable=True),
    Column("source_modified_at", DateTime(timezone=True), nullable=True),
)
# One person is one lead: upserts match and check emails whatever their case.
Index("ix_scoring_leads_email_lower", func.lower(leads.c.email))
# The lead search's prefix indexes differ by database (SQLite: lower(column); PostgreSQL: lower(column)
# COLLATE "C", as its collation's order is no prefix range): migration scoring_0008 makes them, and only it.
# SQLAlchemy reflects neither form as it was made, so the schema check (test_migration_history) leaves
# these names to the migration; that every upgrade path ends with them is checked there too.
MIGRATION_ONLY_INDEXES = frozenset({"ix_scoring_leads_first_name_lower", "ix_scoring_leads_last_name_lower",
                                    "ix_scoring_leads_email_prefix", "ix_scoring_leads_first_name_prefix",
                                    "ix_scoring_leads_last_name_prefix"})

events = Table(
    "scoring_events",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("lead_id", String(128), nullable=False),
    Column("type", String(64), nullable=False),
    Column("properties", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("idempotency_key", String(200), nullable=True, unique=True),
    Column("source", String(64), nullable=False, default="api"),
    Column("score_delta", Integer, nullable=False, default=0),
    Column("signals", Text, nullable=False, default="[]"),
    Index("ix_scoring_events_lead", "lead_id", "occurred_at"),
)

score_changes = Table(
    "scoring_score_changes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("lead_id", String(128), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("delta", Integer, nullable=False),
    Column("score_after", Integer, nullable=False),
    Column("rule", String(128), nullable=False),
    Column("reason", Text, nullable=False),
    Column("event_id", String(40), nullable=True),
    Column("model_version", Integer, nullable=False),
    Index("ix_scoring_score_changes_lead", "lead_id", "id"),
)

# Bus messages committed with the change that caused them; published after commit, deleted once
# published. A crash between the two leaves rows here, which the next sweep publishes again
# (consumers drop repeats by message id).
outbox = Table(
    "scoring_outbox",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("lead_id", String(128), nullable=False),
    Column("payload", Text, nullable=False),
    # The W3C trace carrier of the request that caused the message (JSON), published beside it.
    Column("trace", Text, nullable=True),
)

# Demonstrable consent (GDPR Art. 7) and other profile changes worth an audit trail.
audit = Table(
    "scoring_audit",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("lead_id", String(128), nullable=False, index=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("action", String(64), nullable=False),
    Column("source", String(64), nullable=False),
    Column("details", Text, nullable=False),
    Column("erased", Boolean, nullable=False, default=False),
)


# Versions of the scoring model: model.yaml seeds the first; drafts come through the API.
models = Table(
    "scoring_models",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("status", String(16), nullable=False),  # draft | published | retired
    Column("definition", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=True),
)

# Website visitors (the tracking snippet). An anonymous visitor's profile (scored like a lead's, never
# announced on the bus) and, once identified, the lead it is; `merged_at` is set in the transaction after
# its history was ingested into that lead, so a merge that crashed half-way runs again (its events carry
# idempotency keys: a second run adds nothing).
visitors = Table(
    "scoring_visitors",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("lead_id", String(128), nullable=True, index=True),
    Column("profile", Text, nullable=False, default="{}"),
    Column("answers", Text, nullable=False, default="{}"),
    Column("events", Integer, nullable=False, default=0),
    Column("merged_events", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False),
    Column("linked_at", DateTime(timezone=True), nullable=True),
    Column("merged_at", DateTime(timezone=True), nullable=True),
)

# An anonymous visitor's events, in arrival order (`seq`), until they are merged into a lead.
visitor_events = Table(
    "scoring_visitor_events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("visitor_id", String(64), nullable=False),
    Column("client_id", String(64), nullable=False),
    Column("type", String(64), nullable=False),
    Column("properties", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("score_delta", Integer, nullable=False, default=0),
    Index("ux_scoring_visitor_events_client", "visitor_id", "client_id", unique=True),
)
