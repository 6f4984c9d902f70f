"""Deliverability: signing and return paths of outgoing mail, bounces and complaints as they arrive,
the guards over their rates, and the warm-up of new sending domains.

- Outgoing (called by `Delivery`): `envelope_sender` gives each message its VERP return path; `sign`
  adds the DKIM signature; `sent` records each delivered email by sending domain and provider;
  `hold` defers nurture mail to a paused provider, and over a warming domain's daily limit.
- Incoming: `BounceReceiver` is our SMTP listener (aiosmtpd, on the service's own loop) at the bounce
  domain's MX. It accepts mail only for a VERP address whose MAC verifies (and the feedback-loop
  address `fbl@<bounce domain>`), reads delivery status notifications and ARF reports, and answers
  250 only once their outcome is committed. Provider webhooks reach `apply` through `ReportEvents`.
- `apply`: a hard bounce or a complaint suppresses the address at once (the suppression list, and
  `email_hard_bounced` / `spam_reported` fed back to scoring, which withdraws the lead's email consent:
  the same path as an `email_bounced` event); a soft bounce re-queues the message while it has attempts
  left, and the address is suppressed at the policy's count. Every outcome is a line on the lead's
  timeline. Then the guards look at the provider's rolling rates and pause it when they cross the line.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from aiosmtpd.smtp import SMTP, Envelope, Session

from nurture.db import Database
from nurture.listen import listening_socket_async
from nurture.redisconn import AsyncRedis
from services.messaging.deliverability_store import DeliverabilityStore, DeliveryEventRow, Pause
from services.messaging.domain.bounces import (
    Counts,
    DeliverabilityPolicy,
    Report,
    guard,
    read_report,
    verp_address,
    verp_message,
)
from services.messaging.domain.dkim import DkimSigner
from services.messaging.storage import Feedback, LogLine, Message, Outcome, Store, Suppression

log = logging.getLogger(__name__)

# Warm-up: one key per sending domain and day (the same Redis that holds the per-lead caps); the
# first day a domain sends is kept so the ramp counts from it. Returns 1 when the send fits today.
WARMUP_LUA = """
local first = redis.call('GET', KEYS[1])
if not first then redis.call('SET', KEYS[1], ARGV[1]) first = ARGV[1] end
local day = tonumber(ARGV[1]) - tonumber(first) + 1
local limit = tonumber(ARGV[day + 2] or '0')
if limit == 0 then return {1, day} end
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then return {1, day} end
if redis.call('SCARD', KEYS[2]) >= limit then return {0, day} end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], 172800)
return {1, day}
"""
WARMUP_DAYS = 60


class Handed(NamedTuple):
    """An email the receiving server took (or refused for good at RCPT, `refused`)."""

    message_id: str
    email_hash: str
    rcpt: str
    from_address: str
    refused: bool


class WarmupToday(NamedTuple):
    """A warming sending domain today: the day of its ramp, today's limit, sent so far today."""

    domain: str
    day: int
    limit: int
    sent: int


@dataclass(frozen=True)
class Applied:
    applied: int
    ignored: list[str]


class Deliverability:
    def __init__(self, *, store: Store, dstore: DeliverabilityStore, db: Database, policy: DeliverabilityPolicy,
                 dkim: DkimSigner, bounce_domain: str, secrets: tuple[str, ...], now: Callable[[], datetime],
                 redis: AsyncRedis | None = None) -> None:
        self.store = store
        self.dstore = dstore
        self.db = db
        self.policy = policy
        self.dkim = dkim
        self.bounce_domain = bounce_domain
        self.secrets = tuple(s for s in secrets if s)
        self.now = now
        self.redis = redis
        self.counters: Counter[str] = db.counters  # served by Admin.Stats with the database's
        self._paused: set[str] = set()
        self._paused_read: datetime | None = None

    # --- outgoing ----------------------------------------------------------------------------------
    def envelope_sender(self, message_id: str) -> str:
        return verp_address(message_id, self.secrets[0] if self.secrets else "", self.bounce_domain)

    def sign(self, message: bytes, from_address: str) -> bytes:
        return self.dkim.sign(message, from_address.rpartition("@")[2])

    def warming(self, domain: str) -> bool:
        return self.policy.warming(domain)

    def sending_domain(self, from_address: str) -> str:
        """The domain mail from this address is counted under: its signing domain, else its own, else
        (unknown) the primary signing domain or the bounce domain."""
        key = self.dkim.key_for(from_address.rpartition("@")[2])
        if key is not None:
            return key.domain
        return from_address.rpartition("@")[2].lower() or self.dkim.primary or self.bounce_domain

    async def sent(self, items: Sequence[Handed], now: datetime) -> None:
        """Record emails handed to the receiving server. A recipient refused for good is a send and a
        hard bounce at once, so the rates see the bounces a server gives at once as well as the ones
        that come back by mail."""
        events: list[DeliveryEventRow] = []
        for h in items:
            domain, provider = self.sending_domain(h.from_address), self.policy.provider_of(h.rcpt)
            events.append(DeliveryEventRow("sent", h.message_id, h.email_hash, domain, provider, "smtp", now))
            if h.refused:
                events.append(DeliveryEventRow("hard_bounce", h.message_id, h.email_hash, domain, provider, "smtp",
                                               now))
        await self.db.run(self.dstore.record, events)
        bounced = [e.provider for e in events if e.kind == "hard_bounce"]
        self.counters["deliverability.hard_bounce"] += len(bounced)
        await self._check_guards(set(bounced), now)

    async def paused_providers(self, now: datetime) -> set[str]:
        """Providers paused now (read at most once a second: every worker pass asks)."""
        if self._paused_read is None or abs((now - self._paused_read).total_seconds()) >= 1.0:
            self._paused = {p.provider for p in await self.db.run(self.dstore.paused)}
            self._paused_read = now
        return self._paused

    # --- incoming ----------------------------------------------------------------------------------
    async def receive(self, recipients: Sequence[str], data: bytes) -> str:
        """One mail to the bounce domain: its reports applied; the SMTP reply to give."""
        named = {verp_message(r, self.secrets) for r in recipients} - {None}
        read = read_report(data)
        if read.problem:
            self.counters["deliverability.unreadable_reports"] += 1
            log.info("bounce receiver: %s (for %s)", read.problem, ", ".join(recipients))
            return "250 OK (not a report we act on)"
        reports = []
        for report in read.reports:
            if named:   # sent to a return path of ours: it names the message
                mid = next(iter(named)) if len(named) == 1 else report.message_id
            else:
                # The feedback-loop address: anyone can mail it, and a message id is derived from a
                # guessable dedupe key, so only the returned message's own return path (its MAC
                # verifies) says which message the report is about.
                mid = verp_message(report.return_path, self.secrets) or ""
            if mid and (not named or mid in named):
                reports.append((str(mid), report))
        if not reports:
            return "250 OK (no message of ours named)"
        source = "arf" if read.reports[0].kind == "complaint" else "dsn"
        await self.apply(reports, source=source)
        return "250 OK"

    async def apply(self, reports: Sequence[tuple[str, Report]], *, source: str) -> Applied:
        """Each (message id, report): suppression, feedback to scoring, a retry, the timeline, the guards."""
        now = self.now()
        rows = await self.db.run(self.store.get_messages, [mid for mid, _ in reports])
        known = await self.db.run(self.dstore.known, list(rows))
        softs = await self.db.run(self.dstore.soft_bounce_counts, list(rows))
        outcomes: list[Outcome] = []
        events: list[DeliveryEventRow] = []
        ignored: list[str] = []
        soft_since = now - timedelta(days=self.policy.soft_bounce.window_days)
        for index, (mid, report) in enumerate(reports):
            row = rows.get(mid)
            if row is None or row.channel != "email":
                ignored.append(f"{index}: no email message {mid!r}")
                continue
            if report.kind == "delayed":
                outcomes.append(self._line(row, "message_delayed", f"{row.template} delayed by the receiving "
                                           f"server: {report.detail or report.status}", report))
                continue
            seen = known.setdefault(mid, {})
            if report.kind in ("hard_bounce", "complaint") and report.kind in seen:
                # A report sent twice (a DSN retransmitted, a webhook retried) counts once.
                ignored.append(f"{index}: {report.kind} of {mid} already applied")
                continue
            ehash = row.email_hash or ""
            domain, provider = seen.get("sent") or (self.sending_domain(""), self.policy.provider_of(report.recipient))
            seen[report.kind] = (domain, provider)
            events.append(DeliveryEventRow(report.kind, mid, ehash, domain, provider, source, now))
            if report.kind == "soft_bounce":
                softs[mid] = softs.get(mid, 0) + 1
            outcomes.append(await self._outcome(row, report, ehash, soft_since, source, now,
                                                (domain, provider), softs.get(mid, 0)))
        await self.db.run(self.store.apply, outcomes, now)
        await self.db.run(self.dstore.record, events)
        for e in events:
            self.counters[f"deliverability.{e.kind}"] += 1
        await self._check_guards({e.provider for e in events}, now)
        return Applied(len(reports) - len(ignored), ignored)

    def _line(self, row: Message, kind: str, summary: str, report: Report) -> Outcome:
        return Outcome(row.id, row.status, row.reason or "", log=[LogLine(
            row.id, row.lead_id, kind, summary,
            {"template": row.template, "status": report.status, "detail": report.detail})])

    async def _outcome(self, row: Message, report: Report, ehash: str, soft_since: datetime,
                       source: str, now: datetime, where: tuple[str, str], soft_count: int) -> Outcome:
        """`where`: the (sending domain, provider) the event is counted under; `soft_count`: the message's
        soft bounces with this one (each is its own event on the bus, keyed by its number)."""
        mid, lead_id, template = row.id, row.lead_id, row.template
        props = {"message_id": mid, "template": template, "journey": row.journey, "step": row.step,
                 "status": report.status, "reason": report.detail, "source": source,
                 "sending_domain": where[0], "provider": where[1]}
        details = {"template": template, "status": report.status, "detail": report.detail, "source": source}
        if report.kind == "complaint":
            out = Outcome(mid, row.status, row.reason or "", log=[LogLine(
                mid, lead_id, "message_complaint", f"{template}: the recipient reported it as spam ({report.detail})",
                details)])
            if ehash:
                out.suppress.append(Suppression(ehash, "all", "spam_report", source))
            out.feedback.append(Feedback(f"complaint:{mid}", lead_id, "spam_reported", props, now))
            return out
        if report.kind == "hard_bounce":
            out = Outcome(mid, "failed", f"bounced: {report.detail or report.status}", log=[LogLine(
                mid, lead_id, "message_bounced",
                f"{template} bounced ({_kind_and_status('hard', report.status)}): {report.detail}", details)])
            if ehash:
                out.suppress.append(Suppression(ehash, "all", "hard_bounce", source))
            out.feedback.append(Feedback(f"bounce:{mid}", lead_id, "email_hard_bounced",
                                         {**props, "bounce": "hard"}, now))
            return out
        # Every soft bounce is one event on the bus for analytics' deliverability figures (keyed by its
        # number: a message may soft-bounce again after its retry); scoring and journeys act on none of it.
        # The one at the suppression count is also the `email_hard_bounced` that withdraws consent.
        soft_event = Feedback(f"soft_bounce:{mid}:{soft_count}", lead_id, "email_soft_bounced",
                              {**props, "bounce": "soft"}, now)
        soft = self.policy.soft_bounce
        earlier = await self.db.run(self.dstore.soft_bounces, ehash, soft_since) if ehash else 0
        if ehash and earlier + 1 >= soft.suppress_after:
            out = Outcome(mid, "failed", f"bounced: {report.detail or report.status}", log=[LogLine(
                mid, lead_id, "message_bounced", f"{template} bounced (soft, {earlier + 1} within "
                f"{soft.window_days} days: address suppressed): {report.detail}", details)])
            out.suppress.append(Suppression(ehash, "all", "soft_bounce_limit", source))
            out.feedback.append(soft_event)
            out.feedback.append(Feedback(f"bounce:{mid}", lead_id, "email_hard_bounced",
                                         {**props, "soft_bounces": earlier + 1, "bounce": "soft"}, now))
            return out
        due = now + timedelta(seconds=soft.retry_after_s)
        return Outcome(mid, "scheduled", f"retrying after a soft bounce: {report.detail or report.status}",
                       due_at=due, feedback=[soft_event], log=[LogLine(
                           mid, lead_id, "message_bounced",
                           f"{template} bounced ({_kind_and_status('soft', report.status)}): "
                           f"retry at {due.isoformat()}", {**details, "retry_at": due.isoformat()})])

    # --- guards --------------------------------------------------------------------------------------
    async def rates(self, now: datetime) -> dict[tuple[str, str], Counts]:
        return dict(await self.db.run(self.dstore.counts, now - timedelta(days=self.policy.window_days)))

    async def _check_guards(self, providers: set[str], now: datetime) -> None:
        if not providers:
            return
        start = now - timedelta(days=self.policy.window_days)
        for provider in sorted(providers):
            # A provider resumed by an operator is judged on what happened since: the sends before it
            # led to the pause already.
            resumed = await self.db.run(self.dstore.resumed_at, provider)
            counts = await self.db.run(self.dstore.counts, max(start, resumed) if resumed else start, provider)
            total = _sum(counts.values())
            verdict = guard(total, self.policy)
            for warning in verdict.warnings:
                self.counters["deliverability.warnings"] += 1
                log.warning("deliverability: %s: %s", provider, warning)
            if not verdict.pause:
                continue
            newly: bool = await self.db.run(self.dstore.pause, provider, verdict.pause, now)
            if newly:
                self.counters["deliverability.pauses"] += 1
                log.warning("deliverability: nurture mail to %s paused: %s", provider, verdict.pause)
                self._paused_read = None

    async def resume(self, provider: str, by: str) -> bool:
        done = bool(await self.db.run(self.dstore.resume, provider, by, self.now()))
        self._paused_read = None
        return done

    async def warmup_state(self, now: datetime) -> list[WarmupToday]:
        """Each warming domain's state today."""
        out: list[WarmupToday] = []
        today = epoch_day(now)
        for domain in self.policy.warmup.domains:
            first = await self.redis.get(f"warmup:{{{domain}}}:first") if self.redis is not None else None
            day = today - int(first) + 1 if first is not None else 0
            sent = int(await self.redis.scard(f"warmup:{{{domain}}}:{today}")) if self.redis is not None else 0
            out.append(WarmupToday(domain, day, self.policy.ramp_limit(max(day, 1)), sent))
        return out

    async def pauses(self) -> list[Pause]:
        return list(await self.db.run(self.dstore.paused))


def _kind_and_status(kind: str, status: str) -> str:
    """"hard, 5.1.1" for the timeline, or "hard" when the report named no status code."""
    return f"{kind}, {status}" if status else kind


def _sum(counts: Iterable[Counts]) -> Counts:
    sent = hard = soft = complaints = 0
    for c in counts:
        sent, hard, soft, complaints = sent + c.sent, hard + c.hard, soft + c.soft, complaints + c.complaints
    return Counts(sent, hard, soft, complaints)


def warmup_args(policy: DeliverabilityPolicy, day_number: int, message_id: str) -> list[int | str]:
    """The Lua script's ARGV: today's day number, the message id, then the limit of ramp days 1..N."""
    return [day_number, message_id, *(policy.ramp_limit(d) for d in range(1, WARMUP_DAYS + 1))]


def epoch_day(now: datetime) -> int:
    return int(now.astimezone(UTC).timestamp() // 86400)


class BounceReceiver:
    """aiosmtpd handler at the bounce domain's MX."""

    def __init__(self, app: Deliverability) -> None:
        self.app = app

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        local, _, domain = address.strip("<>").rpartition("@")
        if domain.lower() != self.app.bounce_domain.lower():
            return "550 5.7.1 relaying denied"
        if local.lower() != "fbl" and verp_message(address, self.app.secrets) is None:
            return "550 5.1.1 no such return path"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        try:
            return await self.app.receive(list(envelope.rcpt_tos), envelope.original_content or b"")
        except Exception:
            log.exception("bounce receiver: a report could not be applied; the sender will retry")
            return "451 4.3.0 try again later"


async def start_bounce_listener(app: Deliverability, host: str, port: int) -> asyncio.Server:
    """The bounce receiver on the running loop (the service's own); a port in use is tried again for a
    few seconds (nurture.listen)."""
    loop = asyncio.get_running_loop()
    handler = BounceReceiver(app)
    sock = await listening_socket_async("messaging's bounce receiver", host, port)
    return await loop.create_server(
        lambda: SMTP(handler, decode_data=False, data_size_limit=5 * 1024 * 1024, hostname=app.bounce_domain),
        sock=sock)
