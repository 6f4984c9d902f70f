"""What the application areas of crm_sync share: their errors, stats, state and SQL access."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy.orm import Session

from nurture.api.scoring.v1 import scoring_pb2_grpc
from nurture.clock import Clock
from nurture.db import Database
from nurture.locks import KeyLocks, SharedKeyLocks
from services.crm_sync import domain
from services.crm_sync.app.group_commit import GroupWriter
from services.crm_sync.clients import JourneysLookup
from services.crm_sync.connector import Connector

T = TypeVar("T")


class InputError(ValueError):
    """A malformed request: the caller must fix it (INVALID_ARGUMENT)."""


class UnknownContact(LookupError):
    """A CRM id or lead id this service does not know (NOT_FOUND)."""


class ScoringUnavailable(RuntimeError):
    """Scoring could not take the call now (UNAVAILABLE: the CRM should retry)."""


@dataclass
class SyncStats:
    pushes: int = 0
    push_failures: int = 0
    skipped: int = 0
    inbound: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class CoreBase:
    """What every area of the core shares (set by `CrmSyncCore.__init__`), and its two ways into SQL."""

    db: Database
    clock: Clock
    cfg: domain.SyncConfig
    connector: Connector
    scoring: scoring_pb2_grpc.ScoringStub
    journeys: JourneysLookup
    crm_name: str
    virtual: bool
    replica: str
    writer: GroupWriter
    locks: KeyLocks
    object_locks: SharedKeyLocks
    contact_leases: SharedKeyLocks
    changes_wake: asyncio.Event
    push_wake: asyncio.Event
    stats: SyncStats

    async def sql(self, fn: Callable[[Session], T]) -> T:
        """A read-write transaction in the database's writer executor."""
        def run() -> T:
            with self.db.session() as s:
                return fn(s)

        return await self.db.run(run)

    async def read(self, fn: Callable[[Session], T]) -> T:
        """A read on the database's reader threads (`Database.read`): it does not queue behind writes."""
        def run() -> T:
            with Session(self.db.engine) as s:
                return fn(s)

        return await self.db.read(run)
