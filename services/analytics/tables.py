"""The read model's tables (SQLAlchemy Core), all prefixed `analytics_`.

`analytics_facts` is the record: every fact heard, once (unique id), in the order heard. Every other
table is derived from it and can be rebuilt from it (`python -m services.analytics.rebuild`):
per-message and per-lead state that decides what a new fact changes, and the aggregates reports read,
keyed by UTC day so any range is a sum over days.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from nurture.partitions import partitions_table

metadata = MetaData()
_D = 64  # width of a dimension value (journey, segment, template, ...)

facts = Table(
    "analytics_facts", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(200), nullable=False, unique=True),
    Column("lead_id", String(128), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("body", Text, nullable=False),
)

# What a message has already counted for: opens and clicks are unique per message.
messages = Table(
    "analytics_messages", metadata,
    Column("message_id", String(128), primary_key=True),
    Column("sent", Boolean, nullable=False, default=False),
    Column("opened", Boolean, nullable=False, default=False),
    Column("clicked", Boolean, nullable=False, default=False),
    Column("bounced", Boolean, nullable=False, default=False),
)

engagement = Table(
    "analytics_engagement", metadata,
    Column("day", Date, primary_key=True),
    Column("journey", String(_D), primary_key=True),
    Column("segment", String(_D), primary_key=True),
    Column("template", String(128), primary_key=True),
    Column("channel", String(_D), primary_key=True),
    Column("topic", String(_D), primary_key=True),
    Column("format", String(_D), primary_key=True),
    Column("sent", Integer, nullable=False, default=0),
    Column("opened", Integer, nullable=False, default=0),
    Column("clicked", Integer, nullable=False, default=0),
    Column("bounced", Integer, nullable=False, default=0),
    Column("unsubscribed", Integer, nullable=False, default=0),
)

# Engagement per journey stage (the template's) and segment: content gaps.
stage_engagement = Table(
    "analytics_stage_engagement", metadata,
    Column("day", Date, primary_key=True),
    Column("journey", String(_D), primary_key=True),
    Column("stage", String(_D), primary_key=True),
    Column("segment", String(_D), primary_key=True),
    Column("sent", Integer, nullable=False, default=0),
    Column("opened", Integer, nullable=False, default=0),
    Column("clicked", Integer, nullable=False, default=0),
    Column("bounced", Integer, nullable=False, default=0),
    Column("unsubscribed", Integer, nullable=False, default=0),
)

# Sends per day, journey, segment and channel: what ROI's costs are computed from, without the
# engagement table's template/topic/format detail to sum over.
sends = Table(
    "analytics_sends", metadata,
    Column("day", Date, primary_key=True),
    Column("journey", String(_D), primary_key=True),
    Column("segment", String(_D), primary_key=True),
    Column("channel", String(_D), primary_key=True),
    Column("sent", Integer, nullable=False, default=0),
)

# Leads that were sent nurture, per day and journey (distinct nurtured leads over any range).
nurtured = Table(
    "analytics_nurtured", metadata,
    Column("day", Date, primary_key=True),
    Column("journey", String(_D), primary_key=True),
    Column("segment", String(_D), primary_key=True),
    Column("lead_id", String(128), primary_key=True),
    Index("ix_analytics_nurtured_lead", "lead_id"),
)

# Distinct nurtured leads over any range without counting them: each (lead, scope) send day, counted by
# the lead's previous send day in that scope. A lead has a send in [s, e] exactly when one of its send days
# in [s, e] follows a day before s (or none), so the count is a sum over these cells. Scopes: `a` every
# journey and segment, `s` per segment, `j` per journey, `js` per both (the columns a scope does not use
# hold ""). The fold moves a cell when a late send lands between two days it already knew.
reach = Table(
    "analytics_reach", metadata,
    Column("scope", String(2), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("journey", String(_D), primary_key=True),
    Column("segment", String(_D), primary_key=True),
    Column("prev_day", Date, primary_key=True),
    Column("n", Integer, nullable=False, default=0),
)

# Each lead's lifecycle stage, since when (the dwell of its next change) and its segment on arriving there.
leads = Table(
    "analytics_leads", metadata,
    Column("lead_id", String(128), primary_key=True),
    Column("stage", String(_D), nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
    Column("segment", String(_D), nullable=False, server_default=""),
)

# Lifecycle conversion by cohort: each change counted under the day the lead arrived at the stage it left
# (its previous change, or its creation) and its segment then; over the arrivals at that stage in a range
# (`analytics_lifecycle` by `to_stage`), the share that has moved on to each next stage.
lifecycle_cohorts = Table(
    "analytics_lifecycle_cohorts", metadata,
    Column("day", Date, primary_key=True),
    Column("from_stage", String(_D), primary_key=True),
    Column("to_stage", String(_D), primary_key=True),
    Column("segment", String(_D), primary_key=True),
    Column("n", Integer, nullable=False, default=0),
)

# Lifecycle changes as a histogram of whole minutes spent in the stage left, by day of the change.
lifecycle = Table(
    "analytics_lifecycle", metadata,
    Column("day", Date, primary_key=True),
    Column("from_stage", String(_D), primary_key=True),
    Column("to_stage", String(_D), primary_key=True),
    Column("segment", String(_D), primary_key=True),
    Column("minutes", Integer, primary_key=True),
    Column("band", Integer, nullable=False, default=0),
    Column("n", Integer, nullable=False, default=0),
    # A percentile's band read in order of minutes from the index alone (day and segment filtered there).
    Index("ix_analytics_lifecycle_minutes", "from_stage", "to_stage", "band", "minutes", "day", "segment", "n"),
)

# A percentile's first step: the same dwell histograms in coarse value bands (`reports.band`), by day, ISO
# week and month (`grain` d/w/m, `start` the period's first day), so a range is a few periods' band
# counts; only the band holding a rank is then read in whole minutes.
lifecycle_bands = Table(
    "analytics_lifecycle_bands", metadata,
    Column("grain", String(1), primary_key=True),
    Column("start", Date, primary_key=True),
    Column("from_stage", String(_D), primary_key=True),
    Column("to_stage", String(_D), primary_key=True),
    Column("segment", String(_D), primary_key=True),
    Column("band", Integer, primary_key=True),
    Column("n", Integer, nullable=False, default=0),
)

# A percentile's second step: the band it located, by day, ISO week and month, in 32 sub-bands
# (`reports.sub_band`, named by their first minute), so only the sub-band holding a rank is read in whole
# minutes (a band at 90 days holds tens of thousands of minute rows, a sub-band a few hundred). Keyed to be
# read by (key, band, grain) and a range of period starts.
lifecycle_subbands = Table(
    "analytics_lifecycle_subbands", metadata,
    Column("from_stage", String(_D), primary_key=True),
    Column("to_stage", String(_D), primary_key=True),
    Column("band", Integer, primary_key=True, autoincrement=False),
    Column("grain", String(1), primary_key=True),
    Column("start", Date, primary_key=True),
    Column("segment", String(_D), primary_key=True),
    Column("sub", Integer, primary_key=True, autoincrement=False),
    Column("n", Integer, nullable=False, default=0),
)

# A lead's way through a journey's stages: entered when it was first sent that stage's content,
# left when it was first sent a different stage's content of the same journey.
lead_stages = Table(
    "analytics_lead_stages", metadata,
    Column("lead_id", String(128), primary_key=True),
    Column("journey", String(_D), primary_key=True),
    Column("stage", String(_D), primary_key=True),
    Column("segment", String(_D), nullable=False, default=""),
    Column("entered_at", DateTime(timezone=True), nullable=False),
    Column("left_at", DateTime(timezone=True), nullable=True),
    Column("score", Integer, nullable=True),  # the lead's score when it entered the stage
    # The bus message that entered the lead into the journey (its first send's `entered_by`): a win's
    # path leaves out what the win itself caused (the customer journey), whatever the clock says.
    Column("entered_by", String(200), nullable=False, server_default=""),
)

# Per journey stage, by the day leads entered it: how many entered and how many went on.
stage_counts = Table(
    "analytics_stage_counts", metadata,
    Column("day", Date, primary_key=True),
    Column("journey", String(_D), primary_key=True),
    Column("stage", String(_D), primary_key=True),
    Column("segment", String(_D), primary_key=True),
    Column("entered", Integer, nullable=False, default=0),
    Column("advanced", Integer, nullable=False, default=0),
)

# Dwell in a journey stage before going on, a histogram of whole minutes by the day of entry.
stage_dwell = Table(
    "analytics_stage_dwell", metadata,
    Column("day", Date, primary_key=True),
    Column("journey", String(_D), primary_key=True),
    Column("stage", String(_D), primary_key=True),
    Column("segment", String(_D), primary_key=True),
    Column("minutes", Integer, primary_key=True),
    Column("band", Integer, nullable=False, default=0),
    Column("n", Integer, nullable=False, default=0),
    Index("ix_analytics_stage_dwell_minutes", "journey", "stage", "band", "minutes", "day", "segment", "n"),
)

stage_dwell_bands = Table(
    "analytics_stage_dwell_bands", metadata,
    Column("grain", String(1), primary_key=True),
    Column("start", Date, primary_key=True),
    Column("journey", String(_D), primary_key=True),
    Column("stage", String(_D), primary_key=True),
    Column("segment", String(_D), primary_key=True),
    Column("band", Integer, primary_key=True),
    Column("n", Integer, nullable=False, default=0),
)

stage_dwell_subbands = Table(
    "analytics_stage_dwell_subbands", metadata,
    Column("journey", String(_D), primary_key=True),
    Column("stage", String(_D), primary_key=True),
    Column("band", Integer, primary_key=True, autoincrement=False),
    Column("grain", String(1), primary_key=True),
    Column("start", Date, primary_key=True),
    Column("segment", String(_D), primary_key=True),
    Column("sub", Integer, primary_key=True, autoincrement=False),
    Column("n", Integer, nullable=False, default=0),
)

# Content a lead engaged with (first open, first click of a message): what attribution credits.
touches = Table(
    "analytics_touches", metadata,
    Column("id", String(200), primary_key=True),
    Column("lead_id", String(128), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("ts", BigInteger, nullable=False),  # `at` in microseconds since 1970: exact window arithmetic in SQL
    Column("journey", String(_D), nullable=False),
    Column("template", String(128), nullable=False),
    Column("topic", String(_D), nullable=False),
    Column("format", String(_D), nullable=False),
    Column("segment", String(_D), nullable=False, server_default=""),  # the lead's then: sequences' rates
    Index("ix_analytics_touches_lead_ts", "lead_id", "ts"),
)

# Won deals the CRM reported (conversions with revenue).
won = Table(
    "analytics_won", metadata,
    Column("id", String(200), primary_key=True),
    Column("lead_id", String(128), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("day", Date, nullable=False),
    Column("segment", String(_D), nullable=False),
    Column("amount", Float, nullable=False),
    Column("score", Integer, nullable=True),  # the lead's score at the win
    Index("ix_analytics_won_day", "day"),
    Index("ix_analytics_won_lead", "lead_id"),
)

# Per won deal and journey, the lead's earliest entry of the journey at or before the win (ties by stage)
# and its score then: time to conversion, score progression and value by path read these rows by deal,
# where joining every deal to its lead's stages and comparing times cost the most of those reports. The
# fold recomputes a lead's rows when it wins or enters a stage (a late entry can precede a known win).
won_entries = Table(
    "analytics_won_entries", metadata,
    Column("deal", String(200), primary_key=True),
    Column("journey", String(_D), primary_key=True),
    Column("lead_id", String(128), nullable=False),
    Column("entered_ts", BigInteger, nullable=False),  # microseconds since 1970, as `analytics_won.ts`
    Column("stage", String(_D), nullable=False),
    Column("score", Integer, nullable=True),
)

# Deliverability: what a message already counted for there (sent, delivered, a hard bounce, a complaint
# count once per message; every soft bounce counts).
deliveries = Table(
    "analytics_deliveries", metadata,
    Column("message_id", String(128), primary_key=True),
    Column("sent", Boolean, nullable=False, default=False),
    Column("delivered", Boolean, nullable=False, default=False),
    Column("hard_bounced", Boolean, nullable=False, default=False),
    Column("complained", Boolean, nullable=False, default=False),
)

# Emails by UTC day, sending domain and mailbox provider (as messaging's guards count them), segment and
# journey: each figure on the day its event happened.
deliverability = Table(
    "analytics_deliverability", metadata,
    Column("day", Date, primary_key=True),
    Column("domain", String(255), primary_key=True),
    Column("provider", String(_D), primary_key=True),
    Column("segment", String(_D), primary_key=True),
    Column("journey", String(_D), primary_key=True),
    Column("sent", Integer, nullable=False, default=0),
    Column("delivered", Integer, nullable=False, default=0),
    Column("hard_bounced", Integer, nullable=False, default=0),
    Column("soft_bounced", Integer, nullable=False, default=0),
    Column("complaints", Integer, nullable=False, default=0),
)

# A lead's score now: the score its latest fact carried (by time, then order heard; scoring's
# `score_changed` carries every change), and whether a deal of the lead was won.
lead_scores = Table(
    "analytics_lead_scores", metadata,
    Column("lead_id", String(128), primary_key=True),
    Column("score", Integer, nullable=True),
    Column("ts", BigInteger, nullable=False),  # the time of the fact that carried it, in microseconds
    Column("won", Boolean, nullable=False, default=False),
)

# Leads not converted (no won deal) by the day and segment of their earliest entry of a journey (journey
# "": of any journey) with a score then: how many, the sum of their scores then and of their scores now.
# The fold moves a lead's contribution when its score, its earliest entry or its won state changes.
score_now = Table(
    "analytics_score_now", metadata,
    Column("day", Date, primary_key=True),
    Column("journey", String(_D), primary_key=True),
    Column("segment", String(_D), primary_key=True),
    Column("leads", Integer, nullable=False, default=0),
    Column("entry_sum", BigInteger, nullable=False, default=0),
    Column("now_sum", BigInteger, nullable=False, default=0),
)

# Conversion rate per content sequence: the leads that first engaged with a sequence (by template or topic,
# of 2 or 3 steps; of every journey's touches, journey "*", and of each journey's) by the day and segment of
# the touch that completed it, and the whole days (rounded up) to their first won deal after it (`lag`, -1:
# none yet). Counted by day, ISO week and month (`grain` d/w/m, `start` the period's first day), so a range is
# a few periods' rows (`reports.periods`), not a row per day. The fold recomputes a lead's part from its whole
# touch history when it engages or wins (a late touch can move or break a sequence), takes the old part out
# and adds the new.
sequence_rates = Table(
    "analytics_sequence_rates", metadata,
    Column("unit", String(16), primary_key=True),
    Column("length", Integer, primary_key=True, autoincrement=False),
    Column("journey", String(_D), primary_key=True),
    # Start before grain: a range's periods are read by IN lists of their starts (`reports.period_list`), an
    # index seek each; with grain first, as (grain, start) ranges in one OR, SQLite read every period of the key.
    Column("start", Date, primary_key=True),
    Column("grain", String(1), primary_key=True),
    Column("segment", String(_D), primary_key=True),
    Column("sequence", String(400), primary_key=True),
    Column("lag", Integer, primary_key=True, autoincrement=False),
    Column("leads", Integer, nullable=False, default=0),
)

# The content sequence each won deal is credited with: per deal, unit (template, topic), length (2, 3) and
# journey ("*": every journey's touches), the last `length` steps of its lead's touches at or before the win
# and the whole days (rounded up) from the last touch of the first of them to the win (`lag`): the window
# of a report holds the sequence when `lag <= window_days`. With the deal's day, segment and amount, so the
# sequences report sums these rows in range instead of reading every deal's touches. The fold recomputes a
# lead's rows when it engages or wins (a late touch can change a deal's sequence): touches are only ever
# added, so a deal's rows are only added or replaced.
deal_sequences = Table(
    "analytics_deal_sequences", metadata,
    Column("deal", String(200), primary_key=True),
    Column("unit", String(16), primary_key=True),
    Column("length", Integer, primary_key=True, autoincrement=False),
    Column("journey", String(_D), primary_key=True),
    Column("lead_id", String(128), nullable=False),
    Column("day", Date, nullable=False),
    Column("segment", String(_D), nullable=False),
    Column("amount", Float, nullable=False),
    Column("sequence", String(400), nullable=False),
    Column("lag", Integer, nullable=False),
    # The report's read from the index alone: the range of days of one (unit, length, journey).
    Index("ix_analytics_deal_sequences_read", "unit", "length", "journey", "day", "segment", "lag", "sequence",
          "amount"),
    Index("ix_analytics_deal_sequences_lead", "lead_id"),
)

# Which fold the derived tables were made by: a service whose fold changed rebuilds them at start.
meta = Table(
    "analytics_meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(200), nullable=False),
)

# The fencing epoch of each partition of the leads (nurture.partitions: replicas of the fold).
partitions = partitions_table(metadata, "analytics")

DERIVED = (messages, engagement, stage_engagement, sends,
           nurtured, reach, leads, lifecycle, lifecycle_bands, lifecycle_subbands, lead_stages, stage_counts,
           stage_dwell, stage_dwell_bands, stage_dwell_subbands, touches, won, won_entries, deliveries, deliverability,
           lead_scores, score_now, sequence_rates, lifecycle_cohorts, deal_sequences)
