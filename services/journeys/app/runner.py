"""The journeys service's work loop: bus messages in, timers fired, effects performed, state committed.

Order of work for one lead (one asyncio lock per lead, so a message and a timer never interleave):
load the state from SQL, let the engine decide, perform its effects one by one (messaging Send,
crm_sync RequestTask, scoring UpsertLead, each with its dedupe key), commit state + step runs +
transitions in one transaction, then arm the touched enrolments' timers in Redis and ack the claimed
ones. A crash anywhere replays from the last commit: the dedupe keys repeat, the receiving services
answer `duplicate`, and the token in each timer member drops timers that no longer match.

Replicas (`nurture.partitions`): a lead belongs to partition crc32(lead) mod P, where P divides both the
bus and the timer shard counts (their greatest common divisor), so a lead's bus shard and timer shard
fall in the same partition. A replica reads the bus shards and claims the timer shards of the partitions
it owns; every transaction of that work ends with the fencing check, and an effect is performed only
while the lead's partition is owned (`Ownership.require`): a replica that lost a partition (or woke from a
pause past its lease) commits nothing and sends nothing more for it, and the new owner starts again from
the last commit, where the dedupe keys make a repeated effect `duplicate`. Without an ownership (the
simulator, tests that drive the runtime alone) the runtime owns everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nurture import limits, telemetry, times
from nurture.busmessage import BusMessage
from nurture.clock import Clock
from nurture.db import Database
from nurture.locks import KeyLocks
from nurture.partitions import Fenced, Ownership
from services.journeys import storage
from services.journeys.clients import Clients, Unavailable
from services.journeys.domain import step_counts, whynot
from services.journeys.domain.calendar import Calendar, Campaign
from services.journeys.domain.definitions import (
    DefinitionError,
    Journey,
    PlaybookSettings,
    check,
    key_problem,
    load,
    read_playbook,
)
from services.journeys.domain.engine import Engine, migrate
from services.journeys.domain.funnel import Funnel, feed
from services.journeys.domain.registry import Registry
from services.journeys.domain.state import (
    ACTIVE,
    DATE_PREFIX,
    INACTIVITY,
    LIVE,
    LeadState,
    Outcome,
    Withdrawal,
    parse_time,
)
from services.journeys.timers import Arm, Timer, TimerStore

log = logging.getLogger(__name__)
_tracer = telemetry.tracer(__name__)
RETRY_DELAY = timedelta(seconds=60)
PROCESSED_KEEP = timedelta(days=7)
HOUSEKEEPING_EVERY = timedelta(hours=1)
CLAIM_BATCH = 500
PARALLEL_LEADS = 32
CALENDAR_PAGE = 500  # leads per step of a campaign's walk
DEFINITIONS_EVERY_S = 1.0  # how often a replica looks for versions another replica stored or published


class NotFound(Exception):
    """An unknown journey or version."""


class Invalid(Exception):
    """A request that cannot be applied; `problems` lists why."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


@dataclass
class VersionInfo:
    """A stored version of a journey: draft, published, or retired when another was published."""

    version: int
    status: str
    created_at: datetime | None
    published_at: datetime | None


@dataclass(frozen=True)
class JourneySummary:
    """A journey as listed (the JourneySummary message)."""

    key: str
    name: str
    kind: str
    mode: str
    priority: int
    published_version: int
    latest_version: int
    status: str  # published | draft | archived
    templates: list[str] = field(default_factory=list)  # the template keys its published version sends


def playbook_changes(rows: Sequence[storage.Definition], docs: Mapping[str, dict[str, Any]]
                     ) -> list[tuple[str, dict[str, Any], bool]]:
    """The playbook files to store as new versions (new, or changed since the last version stored from
    the playbook), each with whether it is published: not a journey an editor archived, which a changed
    file must not bring back at the next start (it waits as a draft for unarchive or a publish)."""
    latest_playbook: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.source == "playbook":
            latest_playbook[row.key] = json.loads(row.document)
    archived = {r.key for r in rows if r.status == "archived"} - {r.key for r in rows if r.status == "published"}
    return [(key, doc, key not in archived) for key, doc in docs.items()
            if latest_playbook.get(key) != json.loads(json.dumps(doc, sort_keys=True))]


class JourneysRuntime:
    def __init__(self, *, db: Database, timers: TimerStore, clock: Clock, clients: Clients,
                 settings: PlaybookSettings, calendar: Calendar | None = None,
                 ownership: Ownership | None = None) -> None:
        self.ownership = ownership
        self._definitions_seen: tuple[int, int, str] | None = None
        self.calendar = calendar or Calendar()
        self._campaigns_done: set[str] | None = None  # read from SQL once, then kept here
        self.db = db
        self.timers = timers
        self.clock = clock
        self.clients = clients
        self.registry = Registry()
        self.engine = Engine(settings, self.registry.resolve, self.registry.published)
        self._locks = KeyLocks()
        self._sem = asyncio.Semaphore(PARALLEL_LEADS)
        self.meta: dict[str, dict[int, VersionInfo]] = {}  # key -> version -> info
        self._housekept: datetime | None = None
        # Recorded migrations may wait for this replica's partitions: looked for at start, after a publish
        # (here or by another replica) and when partitions change hands; cleared by a pass that finished.
        self._migrations_due = True
        # Leads whose timers could not be armed (Redis failing, or not confirming the arms on a replica):
        # re-armed from SQL by the timer loop and at each Settle (rearm_unarmed).
        self._unarmed: set[str] = set()
        # Withdrawals (messaging Withdraw) that found messaging away: tried again by the timer loop and at
        # each Settle (retry_withdrawals).
        self._unwithdrawn: list[tuple[str, Withdrawal]] = []

    # -- definitions ------------------------------------------------------------------------------

    def _sync_playbook(self, now: datetime) -> None:
        """Store every playbook file as a published version when it is new or changed (source playbook)."""
        docs = read_playbook()
        with self.db.session() as s:
            for key, doc, publish in playbook_changes(storage.definitions(s), docs):
                storage.add_definition(s, key=key, document=doc, source="playbook", now=now, publish=publish)

    def _load_registry(self) -> None:
        with self.db.session() as s:
            rows = storage.definitions(s)
            self._definitions_seen = storage.definitions_signature(s)
        for row in rows:
            if self.registry.resolve(row.key, row.version) is not None:  # a version's document never changes
                if row.status == "published":
                    self.registry.publish(row.key, row.version)
                self.meta.setdefault(row.key, {})[row.version] = VersionInfo(row.version, row.status, row.created_at,
                                                                             row.published_at)
                continue
            doc = json.loads(row.document)
            try:
                journey = load(doc, version=row.version)
            except DefinitionError as exc:
                log.error("journey %s v%d does not load: %s", row.key, row.version, exc)
                continue
            self.registry.add(journey)
            if row.status == "published":
                self.registry.publish(row.key, row.version)
            self.meta.setdefault(row.key, {})[row.version] = VersionInfo(row.version, row.status, row.created_at,
                                                                         row.published_at)
        # A journey archived (here or by another replica) has no published row: it is live no more.
        live = {row.key for row in rows if row.status == "published"}
        for journey in list(self.registry.published()):
            if journey.key not in live:
                self.registry.unpublish(journey.key)

    async def refresh_definitions(self) -> bool:
        """Learn the versions another replica stored or published since this one last looked (one small
        read when nothing changed); True when the registry changed."""
        def signature() -> tuple[int, int, str]:
            with self.db.session() as s:
                return storage.definitions_signature(s)
        if await self.db.run(signature) == self._definitions_seen:
            return False
        await self.db.run(self._load_registry)
        self._migrations_due = True  # a publish with `migrate` changes the signature too
        return True

    async def start(self) -> None:
        rebuilt = await self.db.run(self._ensure_counters)
        if rebuilt is not None:
            log.info("journeys: step counters derived from the record (%d cells)", rebuilt)
        await self.db.run(self._sync_playbook, self.clock.now())
        await self.db.run(self._load_registry)
        # Replicas: each takes its partitions' in-flight timers back when it gains them (on_partitions).
        moved = await self.timers.recover() if self.ownership is None else 0
        rearmed = await self.rearm_all()
        log.info("journeys: %d journeys live, %d in-flight timers recovered, %d timers re-armed",
                 len(self.registry.published()), moved, rearmed)

    def _ensure_counters(self) -> int | None:
        with self.db.session() as s:
            return storage.ensure_counters(s)

    async def rearm_all(self) -> int:
        """Re-arm every active enrolment's timer from SQL (idempotent): nothing is lost even when
        Redis lost its data or a process died between its commit and its ZADD."""
        def collect() -> tuple[list[Arm], list[Arm]]:
            with self.db.session() as s:
                main: list[Arm] = []
                for a in storage.armed(s):
                    main.append(Arm(a.lead_id, a.ekey, a.token, a.due))
                    if a.side_pending:
                        # Side steps fire now; one still held by the budget is re-armed at its time.
                        main.append(Arm(a.lead_id, a.ekey, "s", datetime.fromtimestamp(0, UTC)))
                inactive = [Arm(lead, INACTIVITY, token, due) for lead, token, due in storage.inactivity_armed(s)]
                inactive += [Arm(d.lead_id, DATE_PREFIX + d.key, d.token, d.due) for d in storage.dates_armed(s)]
            return main, inactive

        main, inactive = await self.db.run(collect)
        for i in range(0, len(main), 5000):
            await self.timers.schedule(main[i:i + 5000])
        for i in range(0, len(inactive), 5000):
            await self.timers.schedule(inactive[i:i + 5000])
        return len(main) + len(inactive)

    # -- partitions -------------------------------------------------------------------------------

    def _fence(self, s: Any, lead_ids: Any) -> None:
        """The fencing check of a transaction writing these leads' state (last, before its commit)."""
        if self.ownership is not None:
            self.ownership.check(s, {self.ownership.partition_of(lead) for lead in lead_ids})

    def _shield(self, s: Any, lead_ids: Iterable[str]) -> bool:
        """Hold off an erasure of these leads on another replica until this transaction ends (first in it,
        before any lead is read); True when the locks were taken (ownership.shield)."""
        if self.ownership is None:
            return False
        return self.ownership.shield(s, {self.ownership.partition_of(lead) for lead in lead_ids})

    def _partition(self, lead_id: str) -> int:
        assert self.ownership is not None
        return self.ownership.partition_of(lead_id)

    def _timer_shards(self) -> set[int] | None:
        """The timer shards this replica claims: every one alone, else its partitions'."""
        if self.ownership is None:
            return None
        owned = self.ownership.owned()
        return {t for t in range(self.timers.shards) if t % self.ownership.partitions in owned}

    async def on_partitions(self, gained: set[int], lost: set[int]) -> None:
        """Ownership changed: a gained partition's timers left in flight by its last owner fire again
        now (their token check drops what that owner did commit); campaigns are read again, as the
        campaign marks of other partitions matter now."""
        self._campaigns_done = None
        self._migrations_due = self._migrations_due or bool(gained)
        if gained and self.ownership is not None:
            shards = {t for t in range(self.timers.shards) if t % self.ownership.partitions in gained}
            moved = await self.timers.recover(shards)
            if moved:
                log.info("journeys: %d in-flight timers of partitions %s fire again", moved, sorted(gained))

    # -- arming -----------------------------------------------------------------------------------

    async def _arm(self, state: LeadState, out: Outcome) -> None:
        await self._committed([(state, out)])

    async def _committed(self, done: list[tuple[LeadState, Outcome]]) -> None:
        """What follows a commit: the timers, then the withdrawals its outcomes ask of messaging."""
        await self._arm_all(done)
        pending = [(state.lead_id, w) for state, out in done for w in out.withdrawn]
        if pending:
            await self._withdraw(pending)

    async def _withdraw(self, pending: list[tuple[str, Withdrawal]]) -> None:
        """Ask messaging to withdraw each left enrolment's waiting messages. After the commit, so an exit
        that is not committed withdraws nothing; messaging away: kept for `retry_withdrawals` (a process
        that stops before then leaves that mail to messaging's send-time checks, as before the exit)."""
        async def one(lead_id: str, w: Withdrawal) -> None:
            try:
                await self.clients.withdraw(lead_id, w)
            except Unavailable as exc:
                log.info("journeys: withdrawing %s of %s waits for messaging (%s)", w.journey, lead_id, exc)
                self._unwithdrawn.append((lead_id, w))
            except Exception:
                log.exception("journeys: withdrawing %s of %s failed", w.journey, lead_id)
        await asyncio.gather(*(one(lead_id, w) for lead_id, w in pending))

    async def retry_withdrawals(self) -> int:
        if not self._unwithdrawn:
            return 0
        pending, self._unwithdrawn = self._unwithdrawn, []
        await self._withdraw(pending)
        return len(pending) - len(self._unwithdrawn)

    async def _arm_all(self, done: list[tuple[LeadState, Outcome]]) -> None:
        """Arm the timers of every (state, outcome) of a batch in one pipelined round trip (one per lead
        was most of a bus batch's time in Redis waits: a batch holds hundreds of leads)."""
        items: list[Arm] = []
        for state, out in done:
            items += self._arms(state, out)
        if not items:
            return
        try:
            await self.timers.schedule(items)
        except Exception as exc:  # the states are committed: their timers are armed again from SQL, not lost
            leads = {state.lead_id for state, _ in done}
            log.warning("journeys: arming %d timers of %d leads failed (%s); re-armed from SQL", len(items),
                        len(leads), exc)
            self._unarmed |= leads

    def _arms(self, state: LeadState, out: Outcome) -> list[Arm]:
        """The timers an outcome (re)arms for its lead."""
        items: list[Arm] = []
        now = self.clock.now()
        for ekey in sorted(out.touched):
            e = state.enrollments.get(ekey)
            if e is not None and e.status == ACTIVE and e.due is not None:
                items.append(Arm(state.lead_id, ekey, e.token, e.due))
        for ekey in sorted(out.side_due):
            e = state.enrollments.get(ekey)
            if e is not None and e.side:
                items.append(Arm(state.lead_id, ekey, "s", max(e.side_at or now, now)))
        if out.inactivity_changed and state.inactive_due is not None:
            items.append(Arm(state.lead_id, INACTIVITY, state.inactive_token, state.inactive_due))
        for key in sorted(out.dates_changed):
            entry = state.dates.get(key)
            due = parse_time(entry.get("at")) if entry else None
            if entry and due is not None:
                items.append(Arm(state.lead_id, DATE_PREFIX + key, int(entry["token"]), due))
        return items

    async def rearm_unarmed(self) -> int:
        """Arm again, from SQL, every timer of the leads whose arming failed; returns how many leads. A lead
        whose arming fails again stays for the next pass (a process that dies meanwhile re-arms all at start)."""
        if not self._unarmed:
            return 0
        leads, self._unarmed = sorted(self._unarmed), set()
        states = await self.db.run(self._load_many, leads)
        await self._arm_all([(state, Outcome(touched=set(state.enrollments), inactivity_changed=True,
                                             side_due={k for k, e in state.enrollments.items() if e.side},
                                             dates_changed=set(state.dates))) for state in states.values()])
        return len(states)

    # -- bus --------------------------------------------------------------------------------------

    async def handle_messages(self, messages: list[BusMessage]) -> None:
        """Bus handler: idempotent by message id; one SQL transaction for the whole batch (the leads
        of the batch are locked first, in a fixed order, so nothing interleaves with them)."""
        by_lead: dict[str, list[BusMessage]] = defaultdict(list)
        for m in messages:
            if m.lead_id:
                by_lead[m.lead_id].append(m)
        if not by_lead:
            return
        async with contextlib.AsyncExitStack() as stack:
            for lead_id in sorted(by_lead):
                await stack.enter_async_context(self._locks.hold(lead_id))
            now = self.clock.now()
            results = await self.db.run(self._apply_batch, by_lead, now)
            await self._committed(results)

    def _apply_batch(self, by_lead: dict[str, list[BusMessage]],
                     now: datetime) -> list[tuple[LeadState, Outcome]]:
        results: list[tuple[LeadState, Outcome]] = []
        with self.db.session() as s:
            self._shield(s, by_lead)
            states = storage.load_states(s, sorted(by_lead))
            done = storage.processed_among(s, [m.id for ms in by_lead.values() for m in ms if m.id])
            writes = storage.Writes()
            for lead_id, messages in by_lead.items():
                state, out = self._apply_messages(s, writes, states.get(lead_id), lead_id, messages, now, done)
                if state is not None:
                    results.append((state, out))
            writes.flush(s)
            self._fence(s, by_lead)
        return results

    def _apply_messages(self, s: Any, writes: storage.Writes, state: LeadState | None, lead_id: str,
                        messages: list[BusMessage], now: datetime,
                        done: set[str]) -> tuple[LeadState | None, Outcome]:
        total = Outcome()
        for m in messages:
            mid = m.id
            if mid and (mid in writes.processed or mid in done):
                # Already applied (a replay after a crash): re-arm what is live, change nothing.
                if state is not None:
                    total.touched |= {k for k, e in state.enrollments.items() if e.status in LIVE}
                    total.inactivity_changed = True
                continue
            if m.type == "lead_erased":
                writes.flush(s)  # what this batch wrote for the lead goes too
                storage.erase(s, lead_id)
                if mid:
                    storage.mark_processed(s, mid, now)
                state = None
                total = Outcome()
                continue
            if state is None:
                state = LeadState(lead_id=lead_id)
            out = self.engine.on_message(state, m, now)
            self._record_engagement(s, lead_id, m, now)
            writes.add(state, out, now=now, processed=mid or None)
            total.extend(out)
        return state, total

    def _record_engagement(self, s: Any, lead_id: str, m: BusMessage, now: datetime) -> None:
        if m.type not in ("email_opened", "email_clicked"):
            return
        props = m.properties
        journey, step = props.get("journey"), props.get("step")
        if not (journey and step):
            run = storage.run_by_message(s, str(props.get("message_id") or ""))
            if run is None:
                return
            journey, step = run.journey, run.step
        at = parse_time(m.occurred_at) or now
        storage.record_engagement(s, event_id=m.id, lead_id=lead_id, journey=str(journey),
                                  step=str(step), etype=m.type, at=at)

    # -- timers -----------------------------------------------------------------------------------

    async def process_due(self, now: datetime | None = None) -> int:
        """Claim and run every timer due now; returns how many were claimed."""
        now = now or self.clock.now()
        total = 0
        while True:
            shards = self._timer_shards()
            if shards is not None and not shards:
                return total
            claimed = await self.timers.claim(now, CLAIM_BATCH, shards)
            if not claimed:
                return total
            total += len(claimed)
            by_lead: dict[str, list[Timer]] = defaultdict(list)
            for t in claimed:
                by_lead[t.lead_id].append(t)
            await self._run_batch(by_lead, claimed, now)

    async def _run_batch(self, by_lead: dict[str, list[Timer]], claimed: list[Timer], now: datetime) -> None:
        """Load the batch's leads in one read, drive them concurrently (effects are gRPC calls), commit
        everything in one transaction, then arm new timers and ack the claimed ones. Any failure
        leaves the claimed timers in flight: their lease expires and they fire again.

        Traced as `timers fire`: a root of its own in the timer loop (a Settle's child with a virtual
        clock), so the batch's SQL and Redis and the sends it asks of messaging are one trace. Without
        it nothing of journeys' was recorded, and each Send began a trace at messaging."""
        with _tracer.start_as_current_span("timers fire",
                                           attributes={"timers": len(claimed), "leads": len(by_lead)}) as span:
            telemetry.tag_ids(span, lead_ids=iter(by_lead))
            await self._run_batch_traced(by_lead, claimed, now)

    async def _run_batch_traced(self, by_lead: dict[str, list[Timer]], claimed: list[Timer], now: datetime) -> None:
        async with contextlib.AsyncExitStack() as stack:
            for lead_id in sorted(by_lead):
                await stack.enter_async_context(self._locks.hold(lead_id))
            try:
                states = await self.db.run(self._load_many, sorted(by_lead))
                outs = await asyncio.gather(*(self._lead_timers(states[lead], ts, now)
                                              for lead, ts in by_lead.items() if lead in states))
                done = await self.db.run(self._save_many,
                                         [(state, out) for state, out in outs if state is not None], now)
                await self._committed(done)
            except Fenced as exc:
                # A partition was lost mid-batch: nothing of it committed. The timers of partitions still
                # owned go back to be claimed again now; the lost ones are the new owner's (it moves them
                # back when it takes the partition over, or their lease runs out).
                assert self.ownership is not None
                kept = [t for t in claimed if self.ownership.owns(self.ownership.partition_of(t.lead_id))]
                log.info("journeys: a batch of %d timers was refused (%s); %d go back to the queue", len(claimed),
                         exc, len(kept))
                await self.timers.release(kept)
                return
            except Exception:
                log.exception("journeys: a batch of %d timers failed; they will fire again", len(claimed))
                return
        await self.timers.ack(claimed)

    async def _lead_timers(self, state: LeadState, timers: list[Timer],
                           now: datetime) -> tuple[LeadState | None, Outcome]:
        async with self._sem:
            out = Outcome()
            prio = {t.ekey: self.engine.priority_of(state, t.ekey) for t in timers}
            for t in sorted(timers, key=lambda x: (-prio.get(x.ekey, 0), x.ekey, x.side)):
                if t.ekey == INACTIVITY:
                    if t.token.isdigit():
                        out.extend(self.engine.inactivity_due(state, int(t.token), now))
                    continue
                if t.ekey.startswith(DATE_PREFIX):
                    if t.token.isdigit():
                        out.extend(self.engine.date_due(state, t.ekey[len(DATE_PREFIX):], int(t.token), now))
                    continue
                e = state.enrollments.get(t.ekey)
                if e is None or e.status != ACTIVE:
                    continue
                if t.side:
                    await self._drive(state, t.ekey, now, out, side=True)
                    if e.side:
                        out.side_due.add(t.ekey)  # still queued (held by the budget): re-arm at side_at
                elif t.token == str(e.token):
                    await self._drive(state, t.ekey, now, out, side=False)
                elif e.due is not None:
                    out.touched.add(t.ekey)  # stale token: make sure the current timer exists
            # Enrolments that an inactivity event or a trigger made due now run in the same pass.
            for ekey in sorted(out.touched):
                e = state.enrollments.get(ekey)
                if e is not None and e.status == ACTIVE and e.due is not None and e.due <= now:
                    await self._drive(state, ekey, now, out, side=False)
            return state, out

    def _load_many(self, lead_ids: list[str]) -> dict[str, LeadState]:
        # Absent ids were erased or never known: their timers are stale.
        with self.db.session() as s:
            return storage.load_states(s, lead_ids)

    def _save_many(self, done: list[tuple[LeadState, Outcome]],
                   now: datetime) -> list[tuple[LeadState, Outcome]]:
        """Write back the states read by an earlier transaction; returns those written. A lead erased
        since it was read (by another replica: this one holds the lead's lock) is left erased."""
        with self.db.session() as s:
            if self._shield(s, [state.lead_id for state, _ in done]):
                present = storage.leads_present(s, [state.lead_id for state, _ in done])
                done = [(state, out) for state, out in done if state.lead_id in present]
            writes = storage.Writes()
            for state, out in done:
                writes.add(state, out, now=now)
            writes.flush(s)
            self._fence(s, [state.lead_id for state, _ in done])
        return done

    def _load(self, lead_id: str) -> LeadState | None:
        with self.db.session() as s:
            return storage.load_state(s, lead_id)

    def _save(self, state: LeadState, out: Outcome, now: datetime) -> bool:
        """Write back a state read by an earlier transaction; False when the lead was erased since."""
        with self.db.session() as s:
            if self._shield(s, [state.lead_id]) and not storage.leads_present(s, [state.lead_id]):
                return False
            storage.save(s, state, out, now=now)
            self._fence(s, [state.lead_id])
        return True

    async def _drive(self, state: LeadState, ekey: str, now: datetime, out: Outcome, *, side: bool) -> None:
        while True:
            effect = self.engine.next_effect(state, ekey, now, out, side=side)
            if effect is None:
                return
            if self.ownership is not None:
                # Never send for a lead whose partition may be another replica's now (a pause past the
                # lease): the batch is refused before the call, not only at its commit.
                self.ownership.require([self.ownership.partition_of(state.lead_id)])
            try:
                status, message_id, reason = await self.clients.perform(state.lead_id, effect)
            except Unavailable as exc:
                self.engine.retry_later(state, effect, now, RETRY_DELAY, out, str(exc))
                return
            self.engine.complete(state, effect, now, out, status=status, message_id=message_id, reason=reason)

    # -- settle -----------------------------------------------------------------------------------

    async def housekeeping(self) -> None:
        """Hourly (domain time): forget old processed bus ids so that table stays bounded."""
        now = self.clock.now()
        if self._housekept is not None and now - self._housekept < HOUSEKEEPING_EVERY:
            return
        self._housekept = now

        def prune() -> int:
            with self.db.session() as s:
                return storage.prune_processed(s, now - PROCESSED_KEEP)
        await self.db.run(prune)

    async def settle(self, drain: Any) -> tuple[int, datetime | None]:
        if self.ownership is not None:
            await self.refresh_definitions()
        await self.housekeeping()
        work = int(await drain())
        work += await self.run_migrations()
        work += await self.rearm_unarmed()
        work += await self.retry_withdrawals()
        work += await self.run_calendar()
        while True:
            done = await self.process_due()
            work += done
            if done == 0:
                break
        due = await self.timers.next_due()
        campaign = await self.next_campaign()
        return work, min((d for d in (due, campaign) if d is not None), default=None)

    # -- content calendar -------------------------------------------------------------------------

    async def _done_campaigns(self) -> set[str]:
        if self._campaigns_done is None:
            def q() -> set[str]:
                with self.db.session() as s:
                    return storage.campaigns_done(s)
            self._campaigns_done = await self.db.run(q)
        return self._campaigns_done

    def _done_here(self, marks: set[str]) -> set[str]:
        """The campaigns done as far as this replica is concerned: marked done (a single process marks the
        campaign), or, with replicas, marked `<campaign>#<partition>` for every partition it owns."""
        if self.ownership is None:
            return marks
        owned = self.ownership.owned()
        ids = {m.partition("#")[0] for m in marks}
        return {c for c in ids if c in marks or all(f"{c}#{p}" in marks for p in owned)}

    async def next_campaign(self) -> datetime | None:
        return self.calendar.next_at(self._done_here(await self._done_campaigns()))

    async def run_calendar(self) -> int:
        """Fire every campaign that is due: its event to each lead in its audience (idempotent per lead
        by message id, so a crash half-way runs the rest on the next pass), then record it as done. A
        replica fires to the leads of the partitions it owns and records it done for each of them."""
        now = self.clock.now()
        marks = await self._done_campaigns()
        parts = None if self.ownership is None else self.ownership.owned()
        work = 0
        for campaign in self.calendar.due(now, self._done_here(marks)):
            if now - campaign.at > campaign.expires:
                status, reached = "expired", 0
                log.info("journeys: campaign %s was due %s, past its %s: skipped", campaign.id,
                         campaign.at.isoformat(), campaign.expires)
            else:
                try:
                    reached = await self._fire(campaign, parts)
                except Fenced as exc:  # a partition was lost on the way: its new owner fires the rest
                    log.info("journeys: campaign %s stopped: %s", campaign.id, exc)
                    return work
                status = "done"
                work += reached
                log.info("journeys: campaign %s sent %s to %d leads", campaign.id, campaign.event, reached)
            ids = [campaign.id] if parts is None else [f"{campaign.id}#{p}" for p in sorted(parts)]

            def mark(ids: list[str] = ids, st: str = status, n: int = reached) -> None:
                with self.db.session() as s:
                    for cid in ids:
                        storage.mark_campaign(s, cid, st, n, now)
            await self.db.run(mark)
            marks.update(ids)
        return work

    async def _fire(self, campaign: Campaign, parts: set[int] | None) -> int:
        after, reached = "", 0
        while True:
            def page(cursor: str = after) -> tuple[list[str], dict[str, LeadState]]:
                with self.db.session() as s:
                    ids = storage.lead_ids_after(s, cursor, CALENDAR_PAGE)
                    return ids, storage.load_states(s, ids)
            ids, states = await self.db.run(page)
            if not ids:
                return reached
            # The cursor follows the ids read, not the states found, so a page is never walked twice
            # nor the walk cut short by a row without a state.
            messages = [self.calendar.message(campaign, lead_id) for lead_id in ids
                        if lead_id in states and campaign.id in self.calendar.audience(states[lead_id].lead)
                        and (parts is None or self._partition(lead_id) in parts)]
            if messages:
                await self.handle_messages(messages)
                reached += len(messages)
            after = ids[-1]

    async def timer_loop(self, interval: float = 0.1) -> None:
        refreshed = 0.0
        while True:
            try:
                if self.ownership is not None and time.monotonic() - refreshed >= DEFINITIONS_EVERY_S:
                    refreshed = time.monotonic()
                    await self.refresh_definitions()
                await self.run_migrations()
                await self.rearm_unarmed()
                await self.retry_withdrawals()
                await self.housekeeping()
                nxt = await self.next_campaign()
                if nxt is not None and nxt <= self.clock.now():
                    await self.run_calendar()
                done = await self.process_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("journeys: timer loop error")
                done = 0
            if done == 0:
                await asyncio.sleep(interval)

    # -- queries ----------------------------------------------------------------------------------

    async def lead_journeys(self, lead_id: str) -> list[storage.EnrollmentRow]:
        def q() -> list[storage.EnrollmentRow]:
            with self.db.session() as s:
                return storage.lead_enrollments(s, lead_id)
        return await self.db.read(q)

    async def leads_journeys(self, lead_ids: list[str]) -> dict[str, list[storage.EnrollmentRow]]:
        """`lead_journeys` of many leads in one read (absent: no enrolment). On the reader threads: crm_sync
        asks this for every bus batch it handles, and behind this service's own bus batch on the writer
        thread its answer waited for that whole batch (crm_sync's lag followed journeys')."""
        def q() -> dict[str, list[storage.EnrollmentRow]]:
            with self.db.session() as s:
                return storage.leads_enrollments(s, lead_ids)
        return await self.db.read(q)

    async def members(self, *, journey: str, stage: str, status: str, cursor: str, limit: int,
                      step: str = "") -> tuple[list[str], str]:
        if self.registry.live(journey) is None and not self.registry.versions(journey):
            raise NotFound(f"unknown journey {journey!r}")
        stages = {st for v in self.registry.versions(journey) if (j := self.registry.resolve(journey, v))
                  for st in j.stages}
        if stage and stage not in stages:
            # No version has it, so no lead is ever at it: an unknown name (an ad audience `family.nope`
            # answered an empty audience), not an empty one.
            raise NotFound(f"journey {journey!r} has no stage {stage!r}")

        def q() -> tuple[list[str], str]:
            with self.db.session() as s:
                return storage.members(s, journey=journey, stage=stage, status=status, cursor=cursor,
                                       limit=max(1, min(limit or 100, 1000)), step=step)
        return await self.db.run(q)

    async def live_steps(self, journey: str) -> dict[str, int]:
        if self.registry.live(journey) is None and not self.registry.versions(journey):
            raise NotFound(f"unknown journey {journey!r}")

        def q() -> dict[str, int]:
            with self.db.session() as s:
                return storage.live_steps(s, journey)
        return await self.db.run(q)

    async def counted_leads(self, journey: str, step: str, measure: str, reason: str, start: datetime | None,
                            end: datetime | None, cursor: str,
                            limit: int) -> storage.CountedLeads:
        """The leads behind one count of `analytics` (storage.counted_leads)."""
        if self.registry.live(journey) is None and not self.registry.versions(journey):
            raise NotFound(f"unknown journey {journey!r}")

        def q() -> storage.CountedLeads:
            with self.db.session() as s:
                return storage.counted_leads(s, journey=journey, step=step, measure=measure, reason=reason,
                                             start=start, end=end, cursor=cursor, limit=limit)
        return await self.db.run(q)

    async def timeline(self, lead_id: str, limit: int) -> list[storage.TransitionRow]:
        def q() -> list[storage.TransitionRow]:
            with self.db.session() as s:
                return storage.timeline(s, lead_id, limit)
        return await self.db.run(q)

    async def erase(self, lead_id: str) -> int:
        async with self._locks.hold(lead_id):  # this replica's own work on the lead; another's: `erasing`
            def q() -> int:
                with self.db.session() as s:
                    if self.ownership is not None:
                        self.ownership.erasing(s, lead_id)
                    return storage.erase(s, lead_id)
            return await self.db.run(q)

    async def analytics(self, key: str, start: datetime | None, end: datetime | None,
                        stages: bool = True) -> dict[str, Any]:
        """The funnel of the journey's recorded history, from its step counters (storage.step_counts:
        kept as the records are written); without `stages`, the stage table, which reads every stage
        transition of the range, is left out."""
        journey = self.registry.live(key) or self._latest(key)

        def q() -> tuple[dict[tuple[str, str, str], int], list[dict[str, Any]]]:
            with self.db.session() as s:
                return (storage.step_counts(s, key, start, end),
                        storage.stage_transitions(s, key, start, end) if stages else [])
        counts, stage_rows = await self.db.run(q)
        funnel = Funnel()
        step_counts.feed(funnel, key, counts)
        feed(funnel, [], [{"journey": key, **row} for row in stage_rows], [])
        report = funnel.report({key: journey})
        if not stages:
            report.get(key, {})["stages"] = []
        body = report.get(key) or {"enrolled": 0, "goals": 0, "completed": 0, "exited": 0, "exit_reasons": {},
                                   "steps": [], "stages": []}
        return {"journey": key, "from": start.isoformat() if start else None,
                "to": end.isoformat() if end else None, **body}

    async def why_not(self, lead_id: str, key: str) -> dict[str, Any]:
        """Which of the journey's entry conditions and branch rules the lead does not meet today."""
        journey = self.registry.live(key) or self._latest(key)
        state = await self.db.run(lambda: self._load(lead_id))
        mine = [e for e in (state.enrollments.values() if state else []) if e.journey == key]
        enrolment = max(mine, key=lambda e: e.entered_at) if mine else None
        # No event: the facts of the lead as it stands (an empty event, as a timer's check sees it).
        facts = self.engine.facts(state or LeadState(lead_id=lead_id), BusMessage(id="", lead_id=lead_id, type=""),
                                  enrolment, self.clock.now())
        return {"lead_id": lead_id, "seen": state is not None, **whynot.why_not(journey, state, facts)}

    def _latest(self, key: str) -> Journey:
        """The version a journey not live now is read by: the one it ran last (an archived journey's, not
        a draft stored since, e.g. its playbook file changed after the archive), else its newest."""
        versions = self.registry.versions(key)
        if not versions:
            raise NotFound(f"unknown journey {key!r}")
        meta = self.meta.get(key, {})
        ran = [(info.published_at, v) for v in versions
               if (info := meta.get(v)) is not None and info.published_at is not None]
        found = self.registry.resolve(key, max(ran)[1] if ran else versions[-1])
        assert found is not None
        return found

    # -- drafts and publishing ---------------------------------------------------------------------

    async def put(self, key: str, document: Mapping[str, Any], *, validate_only: bool) -> tuple[int, list[str]]:
        wrong = key_problem(key)
        if wrong:
            # The key in the address is checked first: a bad one is the problem to name, not a mismatch.
            raise Invalid(f"journey key {limits.shown(key)!r} in the address {wrong}", [f"key: {wrong}"])
        if document.get("key", key) != key:
            raise Invalid(f"the definition's key {limits.shown(str(document.get('key')))!r} differs from the "
                          f"journey key in the address, {key!r}", [f"key: expected {key!r}"])
        doc = {**document, "key": key}
        known = {j.key for j in self.registry.published()} | {key}
        listed = await self.clients.templates()
        templates, drafts = listed if listed is not None else (None, None)
        journey, problems = check(doc, journeys=known, templates=templates, drafts=drafts)
        if problems or journey is None:
            raise Invalid(f"journey {key} has {len(problems)} problem(s)", problems)
        if validate_only:
            return 0, []
        now = self.clock.now()

        def q() -> int:
            with self.db.session() as s:
                return storage.add_definition(s, key=key, document=doc, source="api", now=now, publish=False).version
        version = await self.db.run(q)
        self.registry.add(load(doc, version=version))
        self.meta.setdefault(key, {})[version] = VersionInfo(version, "draft", now, None)
        return version, []

    async def publish(self, key: str, version: int, *, migrate_leads: bool, mapping: Mapping[str, str],
                      dry_run: bool) -> dict[str, Any]:
        versions = self.registry.versions(key)
        if not versions:
            raise NotFound(f"unknown journey {key!r}")
        version = version or versions[-1]
        new = self.registry.resolve(key, version)
        if new is None:
            raise NotFound(f"journey {key} has no version {version}")
        unknown_targets = sorted({t for t in mapping.values() if t not in new.steps})
        if unknown_targets:
            raise Invalid("step mapping names unknown steps", [f"step_mapping: unknown step {t!r}"
                                                               for t in unknown_targets])

        def rows() -> list[storage.EnrollmentRow]:
            with self.db.session() as s:
                return storage.live_of(s, key)
        live = [r for r in await self.db.run(rows) if r.version != version]
        moved: dict[str, int] = defaultdict(int)
        unmapped: dict[str, int] = defaultdict(int)
        for r in live:
            target = mapping.get(r.step or "", r.step) if r.step else None
            if r.step is None or target in new.steps:
                moved[f"v{r.version}:{r.step}->{target}"] += 1
            else:
                unmapped[f"v{r.version}:{r.step}"] += 1
        report: dict[str, Any] = {"journey": key, "version": version, "dry_run": dry_run, "migrate": migrate_leads,
                                  "live_on_other_versions": len(live),
                                  "would_move" if dry_run else "moved": dict(sorted(moved.items())) if migrate_leads
                                  else {}, "unmapped": dict(sorted(unmapped.items())) if migrate_leads else {},
                                  "kept": len(live) if not migrate_leads else sum(unmapped.values())}
        if dry_run:
            return report
        now = self.clock.now()

        def mark() -> None:
            with self.db.session() as s:
                storage.mark_published(s, key=key, version=version, now=now)
                if migrate_leads:  # with the publication: no replica sees one without the other
                    storage.add_migration(s, journey=key, version=version, mapping=dict(mapping), now=now)
        await self.db.run(mark)
        self.registry.publish(key, version)
        for v, info in self.meta.get(key, {}).items():
            if v == version:
                info.status, info.published_at = "published", now
            elif info.status in ("published", "archived"):
                info.status = "retired"
        if migrate_leads:
            self._migrations_due = True
            await self.run_migrations()  # this replica's leads now; the other owners' at their next look
        return report

    async def archive(self, key: str, archived: bool) -> tuple[str, int, bool]:
        """Archive the journey (or bring it back): (its status now, the version, whether it changed). The
        status is in SQL, so every replica learns it at its next refresh; the live leads' exits are a
        recorded migration of kind `archive`, carried out by each partition's owner (run_migrations)."""
        if not self.registry.versions(key):
            raise NotFound(f"unknown journey {key!r}")
        now = self.clock.now()

        def mark() -> tuple[int, bool] | None:
            with self.db.session() as s:
                return storage.mark_archived(s, key=key, archived=archived, now=now)
        marked = await self.db.run(mark)
        if marked is None:
            raise Invalid(f"journey {key} has no published version to {'archive' if archived else 'bring back'}",
                          [f"key: {key!r} was never published"])
        version, changed = marked
        await self.db.run(self._load_registry)
        if changed and archived:
            self._migrations_due = True
            await self.run_migrations()  # this replica's leads now; the other owners' at their next look
        return ("archived" if archived else "published"), version, changed

    async def run_migrations(self) -> int:
        """Carry out the recorded migrations (publishes with `migrate`) for the leads of the partitions this
        replica owns (every lead, alone), oldest first, and mark each done per partition; returns the leads
        moved. Each lead's move is a fenced transaction, so a partition lost on the way is left, undone,
        to its new owner. A migration moves only enrolments that entered before it was published, so one
        carried out late never moves a lead that joined a later version."""
        if not self._migrations_due:
            return 0

        def pending() -> tuple[list[storage.MigrationRow], set[tuple[int, int]]]:
            with self.db.session() as s:
                return storage.migrations_pending(s)
        migrations, done = await self.db.run(pending)
        owned = [storage.ALL_PARTITIONS] if self.ownership is None else sorted(self.ownership.owned())
        moved = 0
        for m in migrations:
            parts = [p for p in owned if (m.id, p) not in done and (m.id, storage.ALL_PARTITIONS) not in done]
            if not parts:
                continue
            if m.kind == "archive":
                try:
                    moved += await self._exit_archived(m, parts)
                except Fenced as exc:
                    log.info("journeys: archive %d of %s stopped: %s", m.id, m.journey, exc)
                    return moved
                continue
            new = self.registry.resolve(m.journey, m.version)
            if new is None:  # published by another replica a moment ago: known after the next refresh
                await self.refresh_definitions()
                if (new := self.registry.resolve(m.journey, m.version)) is None:
                    return moved
            mapping, published = json.loads(m.mapping), times.utc_or_none(m.created_at)
            mine = None if self.ownership is None else set(parts)

            def leads(key: str = m.journey, version: int = m.version, within: set[int] | None = mine) -> list[str]:
                with self.db.session() as s:
                    return sorted({r.lead_id for r in storage.live_of(s, key) if r.version != version
                                   and (within is None or self._partition(r.lead_id) in within)})
            try:
                for lead_id in await self.db.run(leads):
                    moved += await self._migrate_lead(lead_id, m.journey, new, mapping, published)
            except Fenced as exc:  # a partition was lost on the way: its new owner carries the rest out
                log.info("journeys: migration %d of %s stopped: %s", m.id, m.journey, exc)
                return moved
            now = self.clock.now()

            def mark(mid: int = m.id, ps: list[int] = parts, at: datetime = now) -> None:
                with self.db.session() as s:
                    storage.mark_migrated(s, mid, ps, at)
                    if self.ownership is not None:
                        self.ownership.check(s, ps)
            try:
                await self.db.run(mark)
            except Fenced:
                return moved
            log.info("journeys: migration %d of %s to v%d: %d leads moved in partitions %s", m.id, m.journey,
                     m.version, moved, parts)
        self._migrations_due = False
        return moved

    async def _exit_archived(self, m: storage.MigrationRow, parts: list[int]) -> int:
        """An archive's exits for the given partitions: every lead live in the journey (any version) that
        entered before the archive exits with reason "journey archived"; then the partitions are marked."""
        archived_at = times.utc_or_none(m.created_at)
        within = None if self.ownership is None else set(parts)

        def leads() -> list[str]:
            with self.db.session() as s:
                return sorted({r.lead_id for r in storage.live_of(s, m.journey)
                               if within is None or self._partition(r.lead_id) in within})
        exited = 0
        for lead_id in await self.db.run(leads):
            async with self._locks.hold(lead_id):
                state = await self.db.run(self._load, lead_id)
                if state is None:
                    continue
                now = self.clock.now()
                out = Outcome()
                for e in list(state.enrollments.values()):
                    if e.journey == m.journey and e.status in LIVE and (
                            archived_at is None or e.entered_at <= archived_at):
                        self.engine.archived(state, e, now, out)
                if not out.touched:
                    continue
                if await self.db.run(self._save, state, out, now):
                    await self._arm(state, out)
                    exited += 1
        now = self.clock.now()

        def mark() -> None:
            with self.db.session() as s:
                storage.mark_migrated(s, m.id, parts, now)
                if self.ownership is not None:
                    self.ownership.check(s, parts)
        await self.db.run(mark)
        log.info("journeys: archive %d of %s: %d leads exited in partitions %s", m.id, m.journey, exited, parts)
        return exited

    async def _migrate_lead(self, lead_id: str, key: str, new: Journey, mapping: Mapping[str, str],
                            published: datetime | None) -> int:
        async with self._locks.hold(lead_id):
            state = await self.db.run(self._load, lead_id)
            if state is None:
                return 0
            now = self.clock.now()
            out = Outcome()
            for e in list(state.enrollments.values()):
                if e.journey == key and e.status in LIVE and e.version != new.version and (
                        published is None or e.entered_at <= published):
                    migrate(state, e, new, mapping, now, out)
            if not out.touched and not out.transitions:
                return 0
            if not await self.db.run(self._save, state, out, now):
                return 0  # erased meanwhile
            await self._arm(state, out)
            return 1

    def summaries(self) -> list[JourneySummary]:
        out = []
        keys = sorted({k for k in self.meta} | {j.key for j in self.registry.published()})
        for key in keys:
            live = self.registry.live(key)
            versions = self.registry.versions(key)
            shown = live or (self.registry.resolve(key, versions[-1]) if versions else None)
            if shown is None:
                continue
            archived = live is None and any(i.status == "archived" for i in self.meta.get(key, {}).values())
            out.append(JourneySummary(key=key, name=shown.name, kind=shown.kind, mode=shown.mode,
                                      priority=shown.priority, published_version=live.version if live else 0,
                                      latest_version=versions[-1] if versions else 0,
                                      status="published" if live else ("archived" if archived else "draft"),
                                      templates=sorted(set(live.templates())) if live else []))
        return out

    def get(self, key: str, version: int) -> tuple[Journey, list[VersionInfo]]:
        versions = self.registry.versions(key)
        if not versions:
            raise NotFound(f"unknown journey {key!r}")
        live = self.registry.live(key)
        chosen = self.registry.resolve(key, version) if version else (live or self.registry.resolve(key, versions[-1]))
        if chosen is None:
            raise NotFound(f"journey {key} has no version {version}")
        return chosen, [info for _, info in sorted(self.meta.get(key, {}).items())]


