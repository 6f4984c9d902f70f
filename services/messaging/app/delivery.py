"""Delivery: record intent, decide (consent, suppression, window, caps), deliver, record.

Exactly once: `Send` inserts a row keyed by the dedupe key (a second Send with the key is a
duplicate). The worker commits `sending` (the recorded intent, attempt counted) before the SMTP
transaction and `sent` after it. A crash between the two leaves `sending`; on restart the row is due
again and is re-sent with the same Message-ID (derived from the row id), which the receiving server
uses to drop the replay. Nothing else is ever re-sent, so a message reaches the mailbox at most once.

Decisions per message, in order: lead exists → address → consent (recorded with source and time) →
suppression list (all, or the message's category) → render → send window (nurture) → caps (nurture) →
deliver. Transient failures go back to `scheduled` with backoff; permanent ones are `failed` with the
reason; a refused recipient also suppresses the address and tells scoring (`email_hard_bounced`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import grpc
import httpx
from opentelemetry import trace

from nurture import telemetry
from nurture.aio import wait_event
from nurture.api.scoring.v1 import scoring_pb2
from nurture.batching import Batcher
from nurture.clock import Clock
from nurture.db import Database
from nurture.jsontypes import JsonObject
from nurture.redisconn import AsyncRedis, lead_key, run_script
from nurture.rpc import DEADLINE_S
from nurture.settings import Settings
from services.messaging.app.deliverability import WARMUP_LUA, Deliverability, Handed, epoch_day, warmup_args
from services.messaging.app.templates import TemplateLibrary
from services.messaging.clients import Lead, LeadSource, email_hash
from services.messaging.domain import mime
from services.messaging.domain.catalog import Catalog, Rendered, RenderError, choose_variant
from services.messaging.domain.policy import DEFAULT_POLICY, Policy, backoff, next_window
from services.messaging.domain.tokens import Signer, Token
from services.messaging.smtp import SmtpPool, SmtpResult
from services.messaging.storage import (
    ConsentEntry,
    Feedback,
    FeedbackRow,
    LogLine,
    Message,
    Outcome,
    Store,
    Suppression,
    aware,
    naive,
)

log = logging.getLogger(__name__)
_tracer = telemetry.tracer(__name__)

CHANNELS = ("email", "sms", "in_app", "webhook", "ads_audience")
CATEGORIES = ("nurture", "transactional")
BATCH = 500
MAX_BATCH = 1000          # items of one SendBatch call (bounded memory and commit size per call)

# Rolling per-lead caps on one sorted set of nurture sends (members are message ids, so a retry of the
# same message never counts twice), and a minimum gap after the lead's latest nurture send. Returns
# {0, ''} when allowed (and records it), else {epoch second when every limit allows it, what held it}.
# One key, one lead: safe on Redis Cluster. Windows are open at their start: a send exactly a day (or
# the gap) old no longer counts, so the time returned is always after `now` (virtual time lands on
# whole days; an inclusive bound re-deferred to `now` and spun forever).
CAPS_LUA = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 604800)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return {0, ''} end
local untils, why = 0, ''
if ARGV[6] == '1' then
  -- A budget-exempt send (a journey step timed to the hour): no cap or gap holds it, but it counts.
  redis.call('ZADD', KEYS[1], now, ARGV[2])
  redis.call('EXPIRE', KEYS[1], 691200)
  return {0, ''}
end
local day = redis.call('ZCOUNT', KEYS[1], '(' .. (now - 86400), '+inf')
if day >= tonumber(ARGV[3]) then
  local first = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - 86400), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  untils, why = math.ceil(tonumber(first[2]) + 86400), 'frequency cap reached'
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local t = math.ceil(tonumber(oldest[2]) + 604800)
  if t > untils then untils, why = t, 'frequency cap reached' end
end
local gap = tonumber(ARGV[5])
local latest = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if gap > 0 and latest[2] and now - tonumber(latest[2]) < gap then
  local t = math.ceil(tonumber(latest[2]) + gap)
  if t > untils then untils, why = t, 'minimum gap after the previous nurture email' end
end
if untils > 0 then return {untils, why} end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('EXPIRE', KEYS[1], 691200)
return {0, ''}
"""

class InvalidRequest(ValueError):
    """A Send that can never be valid (maps to INVALID_ARGUMENT)."""


def message_id_for(dedupe_key: str) -> str:
    """Stable id (and so a stable Message-ID header) for one dedupe key."""
    return "m" + hashlib.sha256(dedupe_key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SendInput:
    """One requested send, as it comes in (Send or an item of SendBatch)."""

    dedupe_key: str
    lead_id: str
    journey: str
    journey_version: int
    step: str
    channel: str
    template: str
    category: str
    context_json: str
    not_before: datetime | None = None
    # The journey step's `budget: exempt`: past the per-lead caps and minimum gap (still counted in them).
    budget_exempt: bool = False


@dataclass
class SendResult:
    message_id: str
    status: str
    reason: str = ""


@dataclass
class _Ready:
    row: Message
    lead: Lead
    rendered: Rendered | None
    email_hash: str


class _Wire(NamedTuple):
    """One message for an SMTP worker thread: envelope, bytes, and the From address it is signed for."""

    sender: str
    rcpt: str
    data: bytes
    from_address: str


class Delivery:
    def __init__(self, *, settings: Settings, clock: Clock, db: Database, store: Store, catalog: Catalog,
                 redis: AsyncRedis, leads: LeadSource, policy: Policy = DEFAULT_POLICY,
                 smtp_connections: int = 8, deliverability: Deliverability | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.db = db
        self.store = store
        self.catalog = catalog
        self.templates = TemplateLibrary(db=db, catalog=catalog, clock=clock)
        self.redis = redis
        self.leads = leads
        self.policy = policy
        self.signer = Signer(settings.secret, settings.secret_previous)
        self.public_url = settings.public_url.rstrip("/")
        self.smtp = SmtpPool(settings.smtp_url, size=smtp_connections)
        self._smtp_threads = ThreadPoolExecutor(max_workers=smtp_connections, thread_name_prefix="messaging-smtp")
        self._http: httpx.AsyncClient | None = None
        # DKIM, VERP return paths, the guards and the warm-up (app/deliverability.py); None: plain mail.
        self.deliverability = deliverability
        self._work_lock = asyncio.Lock()
        self._feedback_lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self._inserts: Batcher[tuple[Message, LogLine], tuple[bool, Message]] = Batcher(
            self._write_batch, max_batch=BATCH, parallel=1)
        # Last consent recorded per (lead, channel): only changes are written to the consent log.
        self._consent_known: dict[tuple[str, str], bool] = {}
        self._inflight: set[str] = set()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        self._smtp_threads.shutdown(wait=False, cancel_futures=True)
        self.smtp.close()

    async def send_test(self, key: str, version: int, lead: Lead, to: str,
                        context: JsonObject) -> tuple[Rendered, SmtpResult]:
        """One copy of a template version to `to`, marked as a test (subject prefix, X-Nurture-Test) and
        recorded nowhere: no message row, no tracking, no caps. Its links go straight to their address."""
        rendered = await self.templates.preview(key, version, lead, context)
        now = self.clock.now()
        test_id = "test-" + hashlib.sha256(f"{key}:{version}:{to}:{now.isoformat()}".encode()).hexdigest()[:24]
        wire = mime.build(mime.Envelope(
            message_id=test_id, sender_name=self.catalog.sender_name, sender_address=self.catalog.sender_address,
            to_address=to, to_name="", subject=f"[TEST] {rendered.subject}", text=rendered.text,
            html=rendered.html, date=now, category="transactional",
            headers=(("X-Nurture-Template", key), ("X-Nurture-Template-Version", str(rendered.version)),
                     ("X-Nurture-Test", "1"))))
        loop = asyncio.get_running_loop()
        # Signed like every other message (a test should show what recipients' providers will see).
        sender = self.catalog.sender_address
        results = await loop.run_in_executor(self._smtp_threads, self._sign_and_send, [_Wire(sender, to, wire, sender)])
        return rendered, results[0]

    # --- Send ---------------------------------------------------------------------------------------
    async def send(self, *, dedupe_key: str, lead_id: str, journey: str, journey_version: int, step: str,
                   channel: str, template: str, category: str, context_json: str,
                   not_before: datetime | None, budget_exempt: bool = False) -> SendResult:
        """Record one requested message (idempotent by dedupe key) and queue it."""
        request = SendInput(dedupe_key, lead_id, journey, journey_version, step, channel, template, category,
                            context_json, not_before, budget_exempt)
        await self.templates.ensure()
        row, line = self._row(request, self.clock.now())  # InvalidRequest propagates: the call is refused
        return (await self._record([(row, line)]))[0]

    async def withdraw(self, *, lead_id: str, journey: str, journey_version: int, occurrence_prefix: str,
                       reason: str) -> int:
        """The waiting nurture messages of an enrolment the lead left are not sent (Store.withdraw)."""
        ids = await self.db.run(self.store.withdraw, lead_id, journey, journey_version, occurrence_prefix,
                                reason, self.clock.now())
        return len(ids)

    async def send_many(self, requests: Sequence[SendInput]) -> list[SendResult]:
        """`send` for each request, in one group commit; an invalid request gets status "invalid" and
        does not stop the others. One result per request, in order."""
        if len(requests) > MAX_BATCH:
            raise InvalidRequest(f"a batch holds at most {MAX_BATCH} sends, this one has {len(requests)}")
        await self.templates.ensure()
        now = self.clock.now()
        results: list[SendResult | None] = []
        valid: list[tuple[Message, LogLine]] = []
        for request in requests:
            try:
                valid.append(self._row(request, now))
                results.append(None)
            except InvalidRequest as exc:
                results.append(SendResult("", "invalid", str(exc)))
        recorded = iter(await self._record(valid))
        return [r if r is not None else next(recorded) for r in results]

    def _row(self, r: SendInput, now: datetime) -> tuple[Message, LogLine]:
        """The message row and its first timeline line for a request; InvalidRequest when it can never go."""
        if not r.dedupe_key or not r.lead_id:
            raise InvalidRequest("dedupe_key and lead_id are required")
        channel = r.channel or "email"
        if channel not in CHANNELS:
            raise InvalidRequest(f"channel must be one of {', '.join(CHANNELS)}")
        try:
            context = json.loads(r.context_json or "{}")
        except ValueError as exc:
            raise InvalidRequest(f"context_json is not JSON: {exc}") from exc
        if not isinstance(context, dict):
            raise InvalidRequest("context_json must be a JSON object")
        live = self.templates.live(r.template)
        spec = self.catalog.spec(r.template) if live is not None else None
        category = r.category or (spec.category if spec else "nurture")
        if category not in CATEGORIES:
            raise InvalidRequest("category must be nurture or transactional")
        message_id = message_id_for(r.dedupe_key)
        status, reason = "scheduled", ""
        if channel != "ads_audience" and spec is None:
            status, reason = "failed", f"unknown template {r.template!r}"
        due = max(now, r.not_before) if r.not_before else now
        row = Message(
            id=message_id, dedupe_key=r.dedupe_key, lead_id=r.lead_id, journey=r.journey,
            journey_version=r.journey_version, step=r.step, channel=channel, template=r.template,
            category=category, variant=choose_variant(live, r.lead_id) if live is not None else "",
            context_json=json.dumps(context), subject="", email_hash="", status=status,
            reason=reason, attempts=0, due_at=naive(due), created_at=naive(now),
            updated_at=naive(now), sent_at=None, budget_exempt=r.budget_exempt,
        )
        line = LogLine(message_id, r.lead_id, f"message_{status}",
                       f"{r.template} {'queued' if status == 'scheduled' else 'failed: ' + reason}"
                       + (f" for {due.isoformat()}" if status == "scheduled" and due > now else ""),
                       {"journey": r.journey, "version": r.journey_version, "step": r.step,
                        "template": r.template, "channel": channel, "category": category,
                        "due_at": due.isoformat(), "reason": reason})
        return row, line

    async def _record(self, rows: list[tuple[Message, LogLine]]) -> list[SendResult]:
        """Insert through the group commit; a known dedupe key answers "duplicate" with the first row's id."""
        if not rows:
            return []
        stored = await asyncio.gather(*(self._insert(row, line) for row, line in rows))
        results = []
        queued = False
        for (row, _), (created, found) in zip(rows, stored, strict=True):
            if not created:
                results.append(SendResult(found.id, "duplicate", f"already {found.status}"))
                continue
            queued = queued or row.status == "scheduled"
            results.append(SendResult(row.id, row.status, row.reason))
        if queued and self.settings.clock == "real":
            self.wake.set()
        return results

    async def _insert(self, row: Message, line: LogLine) -> tuple[bool, Message]:
        """Group commit: Sends arriving together share one transaction (one in flight at a time)."""
        return await self._inserts.submit((row, line))

    async def _write_batch(self, items: list[tuple[Message, LogLine]]
                           ) -> list[tuple[bool, Message] | BaseException]:
        # An error reaches every caller of the batch; the next batch is served as usual.
        return list(await self.db.run(self.store.insert_messages, items))

    # --- the worker -----------------------------------------------------------------------------------
    async def process_due(self) -> int:
        """Handle every message due now, in batches; returns how many were handled.

        Two batches overlap: while one batch is on the wire, the next is checked and rendered. A batch's
        ids stay in `_inflight` until its outcomes are recorded, so it is never picked up twice."""
        total = 0
        async with self._work_lock:
            tasks: list[asyncio.Task[None]] = []
            try:
                while True:
                    now = self.clock.now()
                    # In flight when the read starts: such a row may be read as still `sending` and then
                    # finish (recorded, and out of `_inflight`) before the filter below, so the filter
                    # uses this copy, or a message just sent is handled, and sent, again. Only this loop
                    # adds to `_inflight`, so nothing joins it during the read.
                    busy = set(self._inflight)
                    rows = await self.db.run(self.store.due_messages, now, BATCH + len(busy),
                                             self.settings.replica)
                    rows = [r for r in rows if r.id not in busy][:BATCH]
                    if not rows:
                        if not tasks:
                            return total
                        await asyncio.gather(*tasks)
                        tasks = []
                        continue
                    # One trace per batch (a root in the worker loop, a Settle's child with a virtual
                    # clock): its checks, rendering, SMTP and outcomes. Without it none of a delivery
                    # was recorded. The span lasts until the batch's task has recorded the outcomes
                    # (SQL and Redis spans are made only inside a span still recording).
                    span = _tracer.start_span("messages due", attributes={"messages": len(rows)})
                    telemetry.tag_ids(span, lead_ids=(r.lead_id for r in rows), message_ids=(r.id for r in rows))
                    with telemetry.as_current(span, end=False):
                        try:
                            ready = await self._prepare(rows, now)
                        except BaseException:
                            span.end()
                            raise
                        total += len(rows)
                        if ready:
                            ids = {r.row.id for r in ready}
                            self._inflight |= ids
                            tasks.append(asyncio.create_task(self._finish(ready, now, ids, span)))
                        else:
                            span.end()
                    tasks = [t for t in tasks if not t.done() or t.exception() is not None]
                    if len(tasks) >= 2:
                        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)

    async def _prepare(self, rows: list[Message], now: datetime) -> list[_Ready]:
        """Checks and rendering for a batch; records what will not go now together with the intents of
        what will (one transaction), and returns the messages to put on the wire."""
        await self.templates.ensure()
        try:
            leads = await self.leads.get_many(r.lead_id for r in rows)
        except grpc.aio.AioRpcError as exc:
            # Scoring is down: nothing can be checked, so nothing goes; try again shortly.
            later = now + timedelta(seconds=30)
            await self.db.run(self.store.apply, [
                Outcome(r.id, "scheduled", f"waiting for scoring: {exc.code().name}", due_at=later)
                for r in rows], now)
            return []
        hashes = {r.id: email_hash(leads[r.lead_id]["email"]) for r in rows
                  if r.lead_id in leads and leads[r.lead_id].get("email")}
        scopes = await self.db.run(self.store.suppression_scopes, hashes.values())
        outcomes: list[Outcome] = []
        consent_seen: list[ConsentEntry] = []
        ready: list[_Ready] = []
        for row in rows:
            lead = leads.get(row.lead_id)
            decision = self._check(row, lead, hashes.get(row.id, ""), scopes, now, consent_seen)
            if isinstance(decision, Outcome):
                outcomes.append(decision)
            else:
                ready.append(decision)
        # Time and caps only for nurture mail that passed every other check.
        held = await self._hold(ready, now)
        outcomes.extend(held.values())
        ready = [r for r in ready if r.row.id not in held]
        consent_seen = [c for c in consent_seen if self._consent_known.get((c.lead_id, c.channel)) != c.granted]
        if consent_seen:
            await self.db.run(self.store.record_consent, consent_seen)
            self._consent_known.update({(c.lead_id, c.channel): c.granted for c in consent_seen})
        # Recorded intent: committed before any delivery attempt.
        intents = [Outcome(r.row.id, "sending", r.row.reason, attempts=r.row.attempts + 1,
                           subject=r.rendered.subject if r.rendered else "", email_hash=r.email_hash,
                           template_version=r.rendered.version if r.rendered else None)
                   for r in ready]
        await self.db.run(self.store.apply, outcomes + intents, now)
        return ready

    async def _finish(self, ready: list[_Ready], now: datetime, ids: set[str], span: trace.Span) -> None:
        try:
            mail = [r for r in ready if r.row.channel == "email"]
            other = [r for r in ready if r.row.channel != "email"]
            emailed, others = await asyncio.gather(
                self._email_many(mail, now), asyncio.gather(*(self._deliver(r, now) for r in other)))
            results = emailed + list(others)
            await self.db.run(self.store.apply, results, now)
        finally:
            self._inflight -= ids
            span.end()

    def _check(self, row: Message, lead: Lead | None, ehash: str,
               scopes: dict[str, dict[str, str]], now: datetime,
               consent_seen: list[ConsentEntry]) -> Outcome | _Ready:
        mid, lead_id, channel = row.id, row.lead_id, row.channel

        def suppressed(reason: str) -> Outcome:
            return Outcome(mid, "suppressed", reason, log=[LogLine(mid, lead_id, "message_suppressed",
                                                                   f"{row.template} not sent: {reason}",
                                                                   {"template": row.template, "reason": reason})])

        if lead is None:
            return suppressed("lead not found")
        if channel == "ads_audience":
            return _Ready(row, lead, None, ehash)
        consent = lead.get("consent") or {}
        # Each channel asks its own consent; an in-app message one the lead never gave nor refused
        # follows its email consent (the in-app inbox carries what its mail would), so a lead's
        # `in_app: false` stops in-app messages whatever its email consent says.
        consent_channel = "sms" if channel == "sms" else (
            "in_app" if channel == "in_app" and consent.get("in_app") is not None else "email")
        granted = consent.get(consent_channel) is True
        consent_seen.append(ConsentEntry(lead_id, consent_channel, granted, "scoring:lead", now,
                                         {"message_id": mid, "consent": lead.get("consent") or {}}))
        if channel in ("email", "sms", "in_app") and not granted:
            return suppressed(f"no {consent_channel} consent")
        if channel == "email" and not lead.get("email"):
            return suppressed("no email address")
        found = scopes.get(ehash, {}) if ehash else {}
        for scope in ("all", row.category):
            if scope in found:
                return suppressed(f"address suppressed ({found[scope]}, {scope})")
        rendered: Rendered | None = None
        try:
            rendered = self._render(row, lead)
        except RenderError as exc:
            return Outcome(mid, "failed", str(exc), log=[LogLine(mid, lead_id, "message_failed", str(exc),
                                                                 {"template": row.template})])
        return _Ready(row, lead, rendered, ehash)

    def _render(self, row: Message, lead: Lead) -> Rendered:
        mid, lead_id = row.id, row.lead_id
        tracked = row.channel in ("email", "in_app", "sms")

        def track(url: str, index: int) -> str:
            token = self.signer.sign(Token("click", mid, lead_id, url=url, link=index))
            return f"{self.public_url}/t/c/{token}"

        unsub = self.signer.sign(Token("unsubscribe", mid, lead_id))
        live = self.templates.live(row.template)
        if live is None:
            raise RenderError(f"unknown template {row.template!r}")
        return self.catalog.render(
            row.template, lead, context=json.loads(row.context_json or "{}"), content=live,
            track=track if tracked else None, variant=row.variant, now=self.clock.now(),
            segments=self.templates.segments.live(),
            pixel_url=f"{self.public_url}/t/o/{self.signer.sign(Token('open', mid, lead_id))}"
            if row.channel == "email" else "",
            unsubscribe_url=f"{self.public_url}/u/{unsub}")

    async def _hold(self, ready: list[_Ready], now: datetime) -> dict[str, Outcome]:
        """Nurture messages outside the lead's daytime or over its caps, deferred (never dropped).

        The caps' and warm-up's counts wait for the Redis replicas the bus waits for: a count a
        failover lost would let the next message through over its cap. Unconfirmed, the batch fails
        before anything is sent and is taken again; a script that runs again for a message it has
        counted counts nothing more (it is keyed by the message id)."""
        held: dict[str, Outcome] = {}
        capped: list[_Ready] = []
        guards = self.deliverability
        paused = await guards.paused_providers(now) if guards is not None else set()
        for r in ready:
            if r.row.category != "nurture" or r.row.channel not in ("email", "sms"):
                continue
            if guards is not None and r.row.channel == "email" and paused:
                provider = guards.policy.provider_of(str(r.lead.get("email") or ""))
                if provider in paused:
                    until = now + timedelta(seconds=guards.policy.paused_recheck_s)
                    held[r.row.id] = _deferred(r, until, f"nurture mail to {provider} is paused (deliverability)")
                    continue
            window = next_window(now, r.lead.get("timezone"), self.policy)
            if window is not None:
                held[r.row.id] = _deferred(r, window, f"outside daytime in {r.lead.get('timezone') or 'UTC'}")
            else:
                capped.append(r)
        if capped:
            epoch = now.timestamp()
            answers = await run_script(self.redis, CAPS_LUA, [
                ([lead_key(r.row.lead_id, "msg:nurture")],
                 [epoch, r.row.id, self.policy.cap_per_day, self.policy.cap_per_week, self.policy.min_gap_s,
                  1 if r.row.budget_exempt else 0])
                for r in capped], self.settings.redis_wait_replicas)
            for r, (until, why) in zip(capped, answers, strict=True):
                if int(until):
                    when = datetime.fromtimestamp(int(until), UTC)
                    window = next_window(when, r.lead.get("timezone"), self.policy) or when
                    reason = why.decode() if isinstance(why, bytes) else str(why)
                    held[r.row.id] = _deferred(r, window, reason)
        if guards is not None and guards.policy.warmup.domains:
            held.update(await self._warm(guards, [r for r in capped if r.row.id not in held
                                                  and r.row.channel == "email"], now))
        return held

    async def _warm(self, guards: Deliverability, ready: list[_Ready], now: datetime) -> dict[str, Outcome]:
        """A warming sending domain's daily limit (deliverability.yaml), counted in Redis beside the caps.
        Counted after the caps let a message through, so a message the caps hold never takes a day's
        slot; and a message the ramp holds gives back the slot the caps gave it (the lead got nothing)."""
        held: dict[str, Outcome] = {}
        day = epoch_day(now)
        warming = [(r, domain) for r in ready if guards.warming(domain := guards.sending_domain(self._from_address(r)))]
        if not warming:
            return held
        answers = await run_script(self.redis, WARMUP_LUA, [
            ([f"warmup:{{{domain}}}:first", f"warmup:{{{domain}}}:{day}"], warmup_args(guards.policy, day, r.row.id))
            for r, domain in warming], self.settings.redis_wait_replicas)
        for (r, domain), (ok, ramp_day) in zip(warming, answers, strict=True):
            if not int(ok):
                tomorrow = datetime.fromtimestamp((day + 1) * 86400, UTC)
                when = next_window(tomorrow, r.lead.get("timezone"), self.policy) or tomorrow
                held[r.row.id] = _deferred(r, when, f"{domain} is warming up (day {int(ramp_day)}: "
                                                       f"{guards.policy.ramp_limit(int(ramp_day))} a day)")
        for mid in held:
            lead_id = next(r.row.lead_id for r, _ in warming if r.row.id == mid)
            await self.redis.zrem(lead_key(lead_id, "msg:nurture"), mid)
        return held

    def _from_address(self, r: _Ready) -> str:
        person = r.rendered.sender if r.rendered else None
        return person.address if person else self.catalog.sender_address

    async def _deliver(self, r: _Ready, now: datetime) -> Outcome:
        """Every channel but email (see `_email_many`)."""
        attempts = r.row.attempts + 1
        channel = r.row.channel
        if channel == "webhook":
            result = await self._webhook(r)
        elif channel == "ads_audience":
            result = await self._audience(r, now)
        elif channel == "in_app":
            result = SmtpResult(ok=True)     # the in-app inbox is this service's own record
        else:
            result = SmtpResult(ok=False, permanent=True, code=0, reason="no SMS gateway is configured")
        return self._outcome(r, result, attempts, now)

    async def _email_many(self, ready: list[_Ready], now: datetime) -> list[Outcome]:
        """Deliver a batch of emails: the pool's connections each take a contiguous share and send it
        transaction after transaction on one worker thread, so a batch costs a thread hop per connection
        rather than per message (every intent was committed before this is called)."""
        if not ready:
            return []
        guards = self.deliverability
        wire = [_Wire(guards.envelope_sender(r.row.id) if guards else self.catalog.sender_address, r.lead["email"],
                      self._mime(r, now), self._from_address(r)) for r in ready]
        share = -(-len(wire) // self.smtp.size)
        loop = asyncio.get_running_loop()
        chunks = await asyncio.gather(*(
            loop.run_in_executor(self._smtp_threads, self._sign_and_send, wire[start:start + share])
            for start in range(0, len(wire), share)))
        results = [result for chunk in chunks for result in chunk]
        if guards is not None:
            await guards.sent([
                Handed(r.row.id, r.email_hash, r.lead["email"], self._from_address(r), result.hard_bounce)
                for r, result in zip(ready, results, strict=True) if result.ok or result.hard_bounce], now)
        return [self._outcome(r, result, r.row.attempts + 1, now)
                for r, result in zip(ready, results, strict=True)]

    def _sign_and_send(self, wire: list[_Wire]) -> list[SmtpResult]:
        """On an SMTP worker thread: DKIM-sign each message (an RSA signature costs milliseconds of CPU,
        which on the event loop would stall every RPC for a whole batch), then send them in order."""
        guards = self.deliverability
        return self.smtp.send_many([(w.sender, w.rcpt, guards.sign(w.data, w.from_address) if guards else w.data)
                                    for w in wire])

    def _mime(self, r: _Ready, now: datetime) -> bytes:
        assert r.rendered is not None
        lead, row = r.lead, r.row
        unsub = f"{self.public_url}/u/{self.signer.sign(Token('unsubscribe', row.id, row.lead_id))}"
        # An email that speaks for the lead's salesperson comes from them (replies reach them); the
        # envelope sender stays the platform's, where bounces are handled.
        person = r.rendered.sender
        extra = (("Reply-To", person.reply_to),) if person and person.reply_to else ()
        return mime.build(mime.Envelope(
            message_id=row.id, sender_name=person.name if person else self.catalog.sender_name,
            sender_address=person.address if person else self.catalog.sender_address,
            to_address=lead["email"], to_name=f"{lead.get('first_name') or ''} {lead.get('last_name') or ''}".strip(),
            subject=r.rendered.subject, text=r.rendered.text, html=r.rendered.html, date=now,
            unsubscribe_url=unsub, category=row.category,
            headers=(("X-Nurture-Template", row.template), *extra)))

    async def _webhook(self, r: _Ready) -> SmtpResult:
        row = r.row
        context = json.loads(row.context_json or "{}")
        url = str(context.get("url") or "")
        if not url.startswith(("http://", "https://")):
            return SmtpResult(ok=False, permanent=True, code=0, reason="webhook needs context.url (http or https)")
        body = json.dumps({
            "message_id": row.id, "lead_id": row.lead_id, "journey": row.journey, "step": row.step,
            "template": row.template, "subject": r.rendered.subject if r.rendered else "",
            "text": r.rendered.text if r.rendered else "", "context": context,
            "lead": {k: r.lead.get(k) for k in ("id", "email", "first_name", "last_name", "segment", "score",
                                                 "grade", "lifecycle_stage")},
        }, default=str).encode()
        signature = hmac.new(self.settings.secret.encode(), body, hashlib.sha256).hexdigest()
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=DEADLINE_S)
        try:
            reply = await self._http.post(url, content=body, headers={
                "Content-Type": "application/json", "Idempotency-Key": row.id,
                "X-Nurture-Signature": f"sha256={signature}"})
        except httpx.HTTPError as exc:
            return SmtpResult(ok=False, code=0, reason=f"webhook: {exc.__class__.__name__}: {exc}")
        if reply.is_success:
            return SmtpResult(ok=True, code=reply.status_code)
        transient = reply.status_code in (408, 425, 429) or reply.status_code >= 500
        return SmtpResult(ok=False, permanent=not transient, code=reply.status_code,
                          reason=f"webhook answered {reply.status_code}")

    async def _audience(self, r: _Ready, now: datetime) -> SmtpResult:
        context = json.loads(r.row.context_json or "{}")
        name = str(context.get("audience") or r.row.template or r.row.journey)
        add = str(context.get("action", "add")) != "remove"
        address = str(r.lead.get("email") or "")
        await self.db.run(self.store.audience_change, name, r.row.lead_id, add, now,
                          email_hash(address) if address else "")
        return SmtpResult(ok=True)

    def _outcome(self, r: _Ready, result: SmtpResult, attempts: int, now: datetime) -> Outcome:
        row = r.row
        mid, lead_id, template = row.id, row.lead_id, row.template
        props = {"message_id": mid, "journey": row.journey, "step": row.step, "template": template,
                 "channel": row.channel, "variant": row.variant,
                 **self.content_of(template, r.rendered.version if r.rendered else row.template_version,
                                   row.step_stage)}
        # The bus message that entered the lead into the journey (journeys' context): analytics leaves
        # an entry a win caused out of that win's path.
        entered_by = json.loads(row.context_json or "{}").get("entered_by")
        if isinstance(entered_by, str) and entered_by:
            props["entered_by"] = entered_by
        guards = self.deliverability
        if guards is not None and row.channel == "email":
            # Where it went, as the guards count it (messaging_delivery_events): analytics' deliverability
            # report groups by these, so the provider mapping stays messaging's data.
            props["sending_domain"] = guards.sending_domain(self._from_address(r))
            props["provider"] = guards.policy.provider_of(str(r.lead.get("email") or ""))
        if result.ok:
            return Outcome(mid, "sent", "", sent_at=now, attempts=attempts,
                           log=[LogLine(mid, lead_id, "message_sent",
                                        f"{row.channel} {template} sent"
                                        + (f": {r.rendered.subject}" if r.rendered else ""),
                                        {**props, "subject": r.rendered.subject if r.rendered else "",
                                         "attempts": attempts})],
                           feedback=[Feedback(f"sent:{mid}", lead_id, "email_sent", props, now)]
                           if row.channel == "email" else [])
        if result.permanent or attempts >= self.policy.max_attempts:
            reason = result.reason if result.permanent else f"gave up after {attempts} attempts: {result.reason}"
            outcome = Outcome(mid, "failed", reason, attempts=attempts,
                              log=[LogLine(mid, lead_id, "message_failed", f"{template} failed: {reason}",
                                           {**props, "code": result.code})])
            if result.hard_bounce and r.email_hash:
                outcome.suppress.append(Suppression(r.email_hash, "all", "hard_bounce", "smtp"))
                outcome.feedback.append(Feedback(f"bounce:{mid}", lead_id, "email_hard_bounced",
                                                 {**props, "reason": result.reason, "bounce": "hard"}, now))
            return outcome
        due = now + backoff(attempts, self.policy)
        return Outcome(mid, "scheduled", f"retrying: {result.reason}", due_at=due, attempts=attempts,
                       log=[LogLine(mid, lead_id, "message_retry",
                                    f"{template} will retry at {due.isoformat()}: {result.reason}",
                                    {**props, "attempts": attempts})])

    def content_of(self, template: str, version: int = 0, stage: str = "") -> dict[str, str]:
        """What a message's events carry of its content: the template's journey stage, topic and format
        (analytics groups by them) and, when it has one, its interest as `category`, the name the
        website's page views give theirs (journeys' interest branches listen to it). The topic and
        format are those the version it was rendered from names (0: not rendered yet, the live one's),
        else the template's default. The stage is the catalog's, else `stage`, the one the sending step
        named (`Message.step_stage`): a template made through the API has no catalog entry, and without
        it a journey added as data had no stage in analytics' progression and content gaps."""
        if not template:
            return {}
        spec = self.catalog.spec(template)   # one made through the API: its journey's topic, the default format
        topic, fmt = self.templates.named(template, version)
        return {k: v for k, v in (("stage", spec.stage or stage), ("topic", topic or spec.topic),
                                  ("format", fmt or spec.format), ("category", spec.interest))
                if v or k != "category"}

    # --- feedback to scoring ----------------------------------------------------------------------
    async def flush_feedback(self) -> int:
        """Send recorded events to scoring (idempotency keys make a resend harmless)."""
        done = 0
        async with self._feedback_lock:
            while True:
                rows = await self.db.run(self.store.pending_feedback, BATCH)
                if not rows:
                    return done
                # A batch is a trace of its own, so its IngestEvents (and what scoring, journeys and the
                # rest do with a sent, opened or bounced email) is one trace with the write-back.
                with _tracer.start_as_current_span("feedback to scoring", attributes={"events": len(rows)}) as span:
                    telemetry.tag_ids(span, lead_ids=(r.lead_id for r in rows))
                    if not await self._flush_feedback(rows):
                        return done
                done += len(rows)

    async def _flush_feedback(self, rows: list[FeedbackRow]) -> bool:
        """One batch of recorded events to scoring; False when scoring could not take it (kept, to retry)."""
        events = []
        for row in rows:
            ev = scoring_pb2.Event(lead_id=row.lead_id, type=row.type, properties_json=row.properties_json,
                                   idempotency_key=row.key, source="messaging")
            ev.occurred_at.FromDatetime(aware(row.occurred_at) or self.clock.now())
            events.append(ev)
        try:
            reply = await self.leads.stub.IngestEvents(scoring_pb2.IngestRequest(events=events), timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            log.warning("feedback to scoring deferred (%s): %d events", exc.code().name, len(rows))
            return False
        for row, res in zip(rows, reply.results, strict=False):
            if res.error_code:
                log.warning("scoring refused %s %s: %s", row.type, row.key, res.error_message)
        await self.db.run(self.store.mark_feedback_sent, [r.key for r in rows])
        return True

    async def run(self) -> None:
        """Real time only: deliver due work as it comes (Send wakes it), poll every 100 ms."""
        while True:
            try:
                n = await self.process_due()
                n += await self.flush_feedback()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("messaging worker pass failed; retrying")
                n = 0
                await asyncio.sleep(1.0)
            if n == 0:
                self.wake.clear()
                await wait_event(self.wake, 0.1)
                # Let a burst of Sends gather into one batch rather than waking per message.
                await asyncio.sleep(0.02)


def _deferred(r: _Ready, until: datetime, why: str) -> Outcome:
    mid, lead_id = r.row.id, r.row.lead_id
    return Outcome(mid, "scheduled", f"deferred: {why}", due_at=until,
                   log=[LogLine(mid, lead_id, "message_deferred",
                                f"{r.row.template} deferred to {until.isoformat()}: {why}",
                                {"template": r.row.template, "until": until.isoformat(), "why": why})])


