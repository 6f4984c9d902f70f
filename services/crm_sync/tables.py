"""The crm_sync service's tables (SQLAlchemy Core). Migrations in migrations/ create exactly these."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text, func

metadata = MetaData()

# One row per lead this service knows: its link to the CRM contact, the latest bus snapshot, the
# per-field sync state (who changed what when), assignment, and the hash of what was last pushed.
leads = Table(
    "crm_sync_leads",
    metadata,
    Column("lead_id", String(128), primary_key=True),
    Column("crm", String(64), nullable=True),
    Column("crm_id", String(128), nullable=True),
    Column("email", String(320), nullable=True, index=True),
    Column("contact_modified_at", DateTime(timezone=True), nullable=True),
    Column("inbound_hash", String(64), nullable=True),
    Column("version", BigInteger, nullable=False, default=0),
    Column("snapshot", Text, nullable=False, default="{}"),
    Column("fields", Text, nullable=False, default="{}"),
    Column("projection", Text, nullable=False, default="{}"),
    Column("journeys", Text, nullable=False, default="[]"),
    Column("owner", String(320), nullable=True),
    Column("team", String(64), nullable=True),
    Column("meeting_link", String(500), nullable=True),
    Column("pushed_hash", String(64), nullable=True),
    Column("converted_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("crm_sync_leads_crm_id", "crm", "crm_id", unique=True),
)
# Contacts are matched by email case-insensitively: without this index every match scanned the table.
Index("crm_sync_leads_email_lower", func.lower(leads.c.email))

# CRM contact ids that were a lead's link and handed it to another contact of the same lead (two
# contacts that carried one email, one after the other; contacts merged in the CRM), or that claimed a
# lead another contact had modified later. They keep resolving to that lead, as HubSpot resolves a
# merged contact's id to the one kept: a later update, activity or deal from such a contact lands on
# the lead it always did, instead of creating a second lead for one person or answering "unknown".
contact_links = Table(
    "crm_sync_contact_links",
    metadata,
    Column("crm", String(64), primary_key=True),
    Column("crm_id", String(128), primary_key=True),
    Column("lead_id", String(128), nullable=False, index=True),
    Column("at", DateTime(timezone=True), nullable=False),
)

# Activities and deals received from the CRM: the last modification time seen per CRM object, so a
# duplicate delivery is recognised and an out-of-order (older) one is dropped as stale.
inbound = Table(
    "crm_sync_inbound",
    metadata,
    Column("crm", String(64), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("object_id", String(128), primary_key=True),
    Column("lead_id", String(128), nullable=False, index=True),
    Column("modified_at", DateTime(timezone=True), nullable=False),
    Column("state", String(64), nullable=False, default=""),
    # A won deal's revenue (in the revenue currency): a change of it is a change the platform acts on, as a
    # change of `state` is. Null for every other deal stage and for activities.
    Column("amount", Float, nullable=True),
    Column("event_id", String(128), nullable=False, default=""),
)

# The change feed the CRM follows with WatchChanges; `seq` is the cursor. Only the bus consumer writes
# it (one writer), so sequence numbers become visible in order and a resumed stream has no gaps.
changes = Table(
    "crm_sync_changes",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("lead_id", String(128), nullable=False, index=True),
    Column("crm_id", String(128), nullable=True),
    Column("changed", Text, nullable=False),
    Column("data", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    # SQLite: AUTOINCREMENT, so a number is never given twice. Without it SQLite gave the highest number
    # deleted (an erased lead's changes) to the next change, and a CRM resuming past it missed it.
    sqlite_autoincrement=True,
)

# The durable outbound queue: one row per push (contact sync, task, owner update, erasure).
outbox = Table(
    "crm_sync_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("lead_id", String(128), nullable=False),
    Column("op", String(16), nullable=False),
    Column("ref", String(128), nullable=False, default=""),
    Column("payload", Text, nullable=False, default="{}"),
    Column("status", String(8), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("done_at", DateTime(timezone=True), nullable=True),
    Column("claimed_by", String(64), nullable=True),  # the replica performing a running job
    Column("claimed_at", DateTime(timezone=True), nullable=True),
    Index("crm_sync_outbox_due", "status", "due_at"),
    Index("crm_sync_outbox_lead", "lead_id", "op", "status"),
)

tasks = Table(
    "crm_sync_tasks",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("dedupe_key", String(300), nullable=False, unique=True),
    Column("lead_id", String(128), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("title", String(300), nullable=False),
    Column("priority", String(16), nullable=False),
    Column("owner", String(320), nullable=True),
    Column("due_at", DateTime(timezone=True), nullable=True),
    Column("details", Text, nullable=False, default="{}"),
    Column("document", Text, nullable=False, default=""),
    Column("rule", String(128), nullable=False, default=""),
    Column("status", String(16), nullable=False, default="queued"),
    Column("remote_id", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

timeline = Table(
    "crm_sync_timeline",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("lead_id", String(128), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("type", String(64), nullable=False),
    Column("summary", Text, nullable=False),
    Column("details", Text, nullable=False, default="{}"),
    Index("crm_sync_timeline_lead", "lead_id", "at"),
)

# Round-robin position per team.
round_robin = Table(
    "crm_sync_round_robin",
    metadata,
    Column("team", String(64), primary_key=True),
    Column("next", Integer, nullable=False, default=0),
)

# Proposals (documents for a prospect: plan, add-ons, pathways, price), one per CRM deal at most.
proposals = Table(
    "crm_sync_proposals",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("lead_id", String(128), nullable=False, index=True),
    Column("deal_id", String(128), nullable=True, unique=True),
    Column("plan", String(64), nullable=False),
    Column("lines", Text, nullable=False),
    Column("pathways", Text, nullable=False),
    Column("total", Float, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("html", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("task_id", String(64), nullable=True),
    Column("message_id", String(128), nullable=True),
    Column("requested_by", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("valid_until", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
)
