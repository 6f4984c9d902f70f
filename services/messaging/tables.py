"""The messaging service's tables (SQLAlchemy Core). The first migration creates exactly these.

Times are stored as naive UTC (SQLite keeps no zone); storage.py converts at the boundary.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Index, Integer, MetaData, String, Table, Text, false

metadata = MetaData()

# One row per requested message: the record of intent. `status` moves scheduled → sending → sent |
# failed, or straight to suppressed; `sending` is written (committed) before the SMTP transaction, so a
# crash leaves a row that is re-sent with the same Message-ID on restart.
messages = Table(
    "messaging_messages", metadata,
    Column("id", String(40), primary_key=True),
    Column("dedupe_key", String(400), nullable=False, unique=True),
    Column("lead_id", String(128), nullable=False),
    Column("journey", String(64), nullable=False, default=""),
    Column("journey_version", Integer, nullable=False, default=0),
    Column("step", String(64), nullable=False, default=""),
    Column("channel", String(16), nullable=False),
    Column("template", String(128), nullable=False),
    Column("category", String(16), nullable=False),
    Column("variant", String(16), nullable=False, default=""),
    Column("template_version", Integer, nullable=False, default=0, server_default="0"),  # 0: not rendered yet
    Column("context_json", Text, nullable=False, default="{}"),
    Column("subject", Text, nullable=False, default=""),
    Column("email_hash", String(64), nullable=False, default=""),   # recipient, for unsubscribes
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("attempts", Integer, nullable=False, default=0),
    Column("due_at", DateTime, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("sent_at", DateTime, nullable=True),
    # The replica that took the message from the queue last (NURTURE_REPLICA), and when: another replica
    # leaves it alone until the claim is older than the lease (services/messaging/storage.py).
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_at", DateTime, nullable=True),
    # The journey step's `budget: exempt` (SendRequest.budget_exempt): the per-lead caps and the minimum
    # gap do not hold the message; it still counts in them (services/messaging/app/delivery.py).
    Column("budget_exempt", Boolean, nullable=False, default=False, server_default=false()),
    Index("ix_messaging_messages_lead", "lead_id", "created_at"),
    Index("ix_messaging_messages_due", "status", "due_at"),
    Index("ix_messaging_messages_template", "template", "variant"),
)

# What happened to each message, for the lead's timeline ("why did this lead get this email").
message_log = Table(
    "messaging_message_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(40), nullable=False),
    Column("lead_id", String(128), nullable=False, index=True),
    Column("at", DateTime, nullable=False),
    Column("type", String(32), nullable=False),
    Column("summary", Text, nullable=False),
    Column("details_json", Text, nullable=False, default="{}"),
)

# Suppression by sha256 of the lowercased address; survives erasure (only the hash is kept).
suppressions = Table(
    "messaging_suppressions", metadata,
    Column("email_hash", String(64), primary_key=True),
    Column("scope", String(16), primary_key=True),     # all | nurture | transactional
    Column("reason", String(64), nullable=False),
    Column("source", String(64), nullable=False),
    Column("at", DateTime, nullable=False),
)

# Consent as observed at each change and at each send decision, with source and time (GDPR Art. 7).
consent_log = Table(
    "messaging_consent_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("lead_id", String(128), nullable=False, index=True),
    Column("channel", String(64), nullable=False),  # "email" or "email:<scope>" (e.g. email:transactional)
    Column("granted", Boolean, nullable=False),
    Column("source", String(64), nullable=False),
    Column("at", DateTime, nullable=False),
    Column("evidence_json", Text, nullable=False, default="{}"),
)

# Opens, clicks and unsubscribes, one row per idempotency key (open:<mid>, click:<mid>:<i>, unsub:<mid>).
tracking = Table(
    "messaging_tracking", metadata,
    Column("key", String(200), primary_key=True),
    Column("message_id", String(40), nullable=False, index=True),
    Column("lead_id", String(128), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("url", Text, nullable=False, default=""),
    Column("at", DateTime, nullable=False),
    Column("hits", Integer, nullable=False, default=1),
)

# Events for scoring (IngestEvents), written in the same transaction as their cause and sent after.
feedback = Table(
    "messaging_feedback", metadata,
    Column("key", String(200), primary_key=True),       # the idempotency key scoring sees
    Column("lead_id", String(128), nullable=False),
    Column("type", String(64), nullable=False),
    Column("properties_json", Text, nullable=False),
    Column("occurred_at", DateTime, nullable=False),
    Column("sent", Boolean, nullable=False, default=False),
    Index("ix_messaging_feedback_pending", "sent"),
)

audience_members = Table(
    "messaging_audience_members", metadata,
    Column("audience", String(128), primary_key=True),
    Column("lead_id", String(128), primary_key=True),
    Column("added_at", DateTime, nullable=False),
)

# Leads kept out of every ad audience (converted customers, unsubscribed, erased).
ad_suppressions = Table(
    "messaging_ad_suppressions", metadata,
    Column("lead_id", String(128), primary_key=True),
    Column("reason", String(64), nullable=False),
    Column("at", DateTime, nullable=False),
)

# Audience changes waiting to reach the ad platform (the ads connector's durable outbound queue):
# one row per lead, audience and direction, sent in batches in id order, retried with backoff.
ads_outbox = Table(
    "messaging_ads_outbox", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("audience", String(128), nullable=False),
    Column("lead_id", String(128), nullable=False),
    Column("email_hash", String(64), nullable=False),
    Column("op", String(8), nullable=False),  # add | remove
    Column("status", String(16), nullable=False),  # pending | done | dead
    Column("attempts", Integer, nullable=False),
    Column("due_at", DateTime, nullable=False),
    Column("last_error", Text, nullable=True),
    Index("ix_messaging_ads_outbox_due", "status", "due_at"),
)

# Bus messages already handled (the handler is idempotent by message id).
inbox = Table(
    "messaging_inbox", metadata,
    Column("id", String(200), primary_key=True),
    Column("at", DateTime, nullable=False),
)

# Templates as versioned data (seeded from templates/catalog.yaml on first start): one row per key with
# its live version, and every version of its content. A version is a draft until published; publishing
# makes it live for the next send and the version live before it `superseded`.
templates = Table(
    "messaging_templates", metadata,
    Column("key", String(128), primary_key=True),
    Column("published_version", Integer, nullable=False, default=0),   # 0: none yet
    Column("latest_version", Integer, nullable=False, default=0),
    Column("updated_at", DateTime, nullable=False),
)

template_versions = Table(
    "messaging_template_versions", metadata,
    Column("key", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("status", String(16), nullable=False),      # draft | published | superseded
    Column("subject", Text, nullable=False),
    Column("preheader", Text, nullable=False),
    Column("body", Text, nullable=False),               # MJML with Jinja2
    Column("text", Text, nullable=False),               # the plain-text part, Jinja2
    Column("variants_json", Text, nullable=False, default="{}"),
    # What the version's sends are about and what kind of piece they are; "": the template's default
    # (its catalog entry's, else its journey's topic and the catalog's default format).
    Column("topic", String(64), nullable=False, default="", server_default=""),
    Column("format", String(64), nullable=False, default="", server_default=""),
    # The call to action's label and page (a path or an https address on the site); "": the template's own.
    Column("cta_label", String(64), nullable=False, default="", server_default=""),
    Column("cta_path", String(400), nullable=False, default="", server_default=""),
    Column("source", String(16), nullable=False),       # seed | api
    Column("created_at", DateTime, nullable=False),
    Column("published_at", DateTime, nullable=True),
)

# A segment's copy as versioned data, as templates are (seeded from templates/catalog.yaml's `segments:`):
# one row per segment with its live version, and every version. The catalog's "" entry, for a lead
# whose segment has none, is the segment `_default`.
segments = Table(
    "messaging_segments", metadata,
    Column("segment", String(64), primary_key=True),
    Column("published_version", Integer, nullable=False, default=0),   # 0: none yet
    Column("latest_version", Integer, nullable=False, default=0),
    Column("updated_at", DateTime, nullable=False),
)

segment_versions = Table(
    "messaging_segment_versions", metadata,
    Column("segment", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("status", String(16), nullable=False),      # draft | published | superseded
    Column("label", String(64), nullable=False),
    Column("intro", Text, nullable=False),              # Jinja2
    Column("recommended_json", Text, nullable=False),   # [{"title", "path"}]
    Column("source", String(16), nullable=False),       # seed | api
    Column("created_at", DateTime, nullable=False),
    Column("published_at", DateTime, nullable=True),
)

# Deliverability (app/deliverability.py): one row per delivered email, bounce and complaint, by sending
# domain and mailbox provider, for the rolling rates, the guards and the figures.
delivery_events = Table(
    "messaging_delivery_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime, nullable=False),
    Column("kind", String(16), nullable=False),  # sent | hard_bounce | soft_bounce | complaint
    Column("message_id", String(64), nullable=False),
    Column("email_hash", String(64), nullable=False),
    Column("domain", String(255), nullable=False),  # the sending domain
    Column("provider", String(64), nullable=False),
    Column("source", String(64), nullable=False),  # smtp | dsn | arf | webhook:<name>
    Index("ix_messaging_delivery_events_at", "at", "kind"),
    Index("ix_messaging_delivery_events_hash", "email_hash", "kind"),
)

# Mailbox providers whose nurture mail is paused by the guards, until an operator resumes them.
provider_pauses = Table(
    "messaging_provider_pauses", metadata,
    Column("provider", String(64), primary_key=True),
    Column("since", DateTime, nullable=False),
    Column("why", Text, nullable=False),
    Column("resumed_at", DateTime, nullable=True),
    Column("resumed_by", String(200), nullable=True),
)
