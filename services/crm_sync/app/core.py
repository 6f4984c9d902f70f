"""The crm_sync core: inbound CRM calls, the bus consumer that builds the change feed and the push
queue, process automation (assignment, tasks, notifications), and the outbound queue worker.

Order of effects, so nothing is lost or doubled:
- inbound: scoring is called first (its own idempotency: lead upsert by id, events by idempotency key
  derived from the CRM's ids and modification time), then our record is committed; a crash between
  the two makes the CRM's retry a harmless repeat;
- outbound: a push is a row in crm_sync_outbox committed with the change that needs it; the worker
  claims rows (status running), performs them, and records done / retry at a due time / dead with the
  reason. Contact pushes are idempotent (PATCH by id; a create meeting the same email updates it);
  tasks and notes carry `nurture_task_id` and are searched for before a retried create."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy.orm import Session

from nurture.api.messaging.v1 import messaging_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2_grpc
from nurture.batching import Batcher
from nurture.clock import Clock
from nurture.db import Database
from nurture.locks import KeyLocks, SharedKeyLocks
from nurture.redisconn import AsyncRedis
from services.crm_sync import domain
from services.crm_sync import storage as st
from services.crm_sync.app.activities import InboundActivities
from services.crm_sync.app.base import SyncStats
from services.crm_sync.app.bus_consumer import BusConsumer
from services.crm_sync.app.contacts import ContactIn, ContactResult, InboundContacts
from services.crm_sync.app.group_commit import GroupWriter
from services.crm_sync.app.outbound import OutboundQueue
from services.crm_sync.clients import JourneysLookup
from services.crm_sync.connector import Connector
from services.crm_sync.proposals import ProposalsConfig, load_proposals


class CrmSyncCore(InboundContacts, InboundActivities, BusConsumer, OutboundQueue):
    """Every area of the application in one object, as the servicer and the wiring see it."""

    def __init__(self, *, db: Database, clock: Clock, cfg: domain.SyncConfig, connector: Connector,
                 scoring: scoring_pb2_grpc.ScoringStub, journeys: JourneysLookup, crm_name: str,
                 virtual: bool, proposals_cfg: ProposalsConfig | None = None,
                 messaging: messaging_pb2_grpc.MessagingStub | None = None,
                 link_secrets: tuple[str, ...] = (), public_url: str = "", replica: str = "0",
                 redis: AsyncRedis | None = None) -> None:
        self.db = db
        self.clock = clock
        self.cfg = cfg
        self.connector = connector
        self.scoring = scoring
        self.journeys = journeys
        self.crm_name = crm_name
        self.virtual = virtual
        self.proposals_cfg = proposals_cfg or load_proposals()
        self.messaging = messaging
        # Proposal links are signed with the first secret; a link signed before a rotation still opens.
        self.link_secrets = tuple(x for x in link_secrets if x) or ("",)
        self.public_url = public_url
        self.replica = replica
        self.writer = GroupWriter(db)
        self.locks = KeyLocks()
        # An activity or deal is one CRM object any replica may be handed a version of: its versions are
        # judged one at a time across replicas (staleness, then scoring's event, then the record).
        self.object_locks = SharedKeyLocks(redis, "nurture:crm_sync:object")
        # A contact likewise (by each way it meets a lead: CRM id, email, lead id), leased a batch at a time.
        self.contact_leases = SharedKeyLocks(redis, "nurture:crm_sync:contact")
        # One batch of contacts in flight: whatever arrives meanwhile joins the next (one read, one
        # scoring call, one commit for all of it). With two in flight, 32 CRM callers sending one
        # contact each made batches of ~9 and a scoring call per batch; with one, ~14 and less CPU per
        # contact in crm_sync and scoring (bench/crm.py). An idle service still takes a lone contact at once.
        self.contacts: Batcher[tuple[str, ContactIn], ContactResult | None] = Batcher(
            self._upsert_batch, max_batch=100, parallel=1)
        self.changes_wake = asyncio.Event()
        self.push_wake = asyncio.Event()
        self.stats = SyncStats()
        self._push_lock = asyncio.Lock()
        self._reclaimed_at = time.monotonic()
        self._change_waiters: set[asyncio.Event] = set()
        self._prefetched: dict[str, st.LeadRecord] = {}

    # ------------------------------------------------------------------------------------------------
    # Admin

    async def timeline(self, lead_id: str, limit: int) -> list[st.TimelineEntry]:
        return await self.read(lambda s: st.get_timeline(s, lead_id, limit))

    async def erase(self, lead_id: str) -> int:
        now = self.clock.now()

        def run(s: Session) -> int:
            row = st.get_lead(s, lead_id)
            removed = st.erase_lead(s, lead_id)
            if row and row.crm_id:
                st.enqueue(s, lead_id, "erase", now, payload={"remote_id": row.crm_id})
            return removed

        removed = await self.sql(run)
        self.push_wake.set()
        return removed
