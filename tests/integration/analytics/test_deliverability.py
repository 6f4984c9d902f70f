"""Deliverability figures equal a brute-force recount of messaging's own records.

The real messaging engine (in process: SQLite or PostgreSQL, real Redis, the SMTP sink, the guards)
sends a generated history over several days: recipients at several mailbox providers, some refused at
RCPT, some refused once and retried, and hard bounces, soft bounces (retried, then suppressed at the
policy's count), complaints, each report sometimes applied twice. What messaging fed back (the events
scoring publishes on the bus) is heard by analytics in random batches with crashes, redeliveries and
duplicate bus messages; the report must equal a recount over `messaging_delivery_events` for every
range and filter, and again after a rebuild from analytics' facts record."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import redis.asyncio as aioredis
from sqlalchemy import select

from gateway.app import create_app
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.bus import Publisher
from nurture.busmessage import BusMessage
from nurture.db import open_database
from nurture.settings import SERVICES, Settings
from services.analytics import storage
from services.analytics.domain import reports
from services.analytics.domain.facts import from_bus
from services.analytics.server import MIGRATIONS
from services.messaging.app.deliverability import Deliverability
from services.messaging.domain.bounces import Report, Warmup
from services.messaging.tables import delivery_events
from services.messaging.tables import messages as message_table
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.analytics.test_exactness import feed
from tests.integration.analytics.test_service import settle
from tests.integration.messaging.conftest import InProc
from tests.integration.messaging.harness import make_lead
from tests.integration.messaging.test_deliverability_guards import SMALL, _inproc

pytestmark = pytest.mark.anyio
# Rates that never pause (a paused provider would hold the history's later sends), the test's providers.
POLICY = SMALL.model_copy(update={
    "warmup": Warmup(), "min_sent": 10**9,
    "providers": {"gmail": ["gmail.com"], "yahoo": ["yahoo.com"], "microsoft": ["outlook.com", "hotmail.com"]}})
DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "example.org", "reject.invalid",
           "tempfail.invalid")
SEGMENTS = ("family", "entrepreneur", "skilled_professional", "")
TEMPLATES = ("family.email_01", "family.email_02", "entrepreneur.email_01", "skilled_professional.email_01")
DAYS = 4
M = storage.DELIVERABILITY_MEASURES


@pytest.fixture
async def messaging(settings: Settings, tmp_path: Path) -> AsyncIterator[InProc]:
    async for inproc in _inproc(settings, tmp_path, POLICY):
        yield inproc


async def _history(inproc: InProc, rnd: random.Random) -> dict[str, int]:
    """Sends and reports over DAYS days; returns how many reports of each kind were applied."""
    guards: Deliverability = inproc.engine.deliverability
    leads = [f"l{n}" for n in range(36)]
    for n, lead in enumerate(leads):
        inproc.scoring.add(make_lead(lead, email=f"{lead}@{DOMAINS[n % len(DOMAINS)]}", timezone="UTC",
                                     segment=SEGMENTS[n % len(SEGMENTS)]))
    applied: dict[str, int] = defaultdict(int)
    for day in range(DAYS):
        for lead in leads:
            if rnd.random() < 0.8:
                template = rnd.choice(TEMPLATES)
                journey, _, step = template.partition(".")
                await inproc.send(lead, template, key=f"{lead}:{journey}:1:{step}:{day}")
        await inproc.settle()
        await inproc.settle()   # the tempfail recipients' second attempt
        for _round in range(2):
            rows = await inproc.db.run(_sent_today, inproc)
            reports_: list[tuple[str, Report]] = []
            for mid, lead_id in rows:
                email = inproc.scoring.leads[lead_id]["email"]
                roll = rnd.random()
                if roll < 0.12:
                    reports_.append((mid, Report("hard_bounce", email, "5.1.1", "no such user")))
                elif roll < 0.40:
                    reports_.append((mid, Report("soft_bounce", email, "4.2.2", "mailbox full")))
                elif roll < 0.52:
                    reports_.append((mid, Report("complaint", email, "", "abuse")))
                if reports_ and rnd.random() < 0.25:
                    reports_.append(reports_[-1])       # the same report again (a DSN retransmitted)
            rnd.shuffle(reports_)
            for _mid, report in reports_:
                applied[report.kind] += 1
            await guards.apply(reports_, source="dsn")
            await inproc.settle()
            inproc.clock.advance(POLICY.soft_bounce.retry_after_s + 1)   # the soft bounces' retries go
            await inproc.settle()
        tomorrow = (int(inproc.clock.now().timestamp()) // 86400 + 1) * 86400
        inproc.clock.set(datetime.fromtimestamp(tomorrow + 3600 * rnd.randint(0, 20), UTC))
    return applied


def _sent_today(inproc: InProc) -> list[tuple[str, str]]:
    with inproc.db.session() as s:
        return [(r.id, r.lead_id) for r in s.execute(
            select(message_table.c.id, message_table.c.lead_id).where(
                message_table.c.channel == "email", message_table.c.status == "sent")
            .order_by(message_table.c.id))]


def _bus(inproc: InProc) -> list[dict[str, Any]]:
    """What scoring publishes for messaging's feedback: one bus message per event it accepted (its
    idempotency key names it), with the lead's snapshot (its segment)."""
    out = []
    for ev in inproc.scoring.events:
        lead = inproc.scoring.leads[ev.lead_id]
        out.append({"id": f"ev:{ev.idempotency_key}", "type": ev.type, "lead_id": ev.lead_id,
                    "occurred_at": ev.occurred_at.ToDatetime(tzinfo=UTC).isoformat(),
                    "properties": json.loads(ev.properties_json or "{}"),
                    "lead": {"id": ev.lead_id, "segment": lead["segment"]}})
    return out


def _raw(inproc: InProc) -> tuple[list[Any], dict[str, tuple[str, str]]]:
    with inproc.db.session() as s:
        events = s.execute(select(delivery_events).order_by(delivery_events.c.id)).all()
        owner = {r.id: (r.lead_id, r.journey) for r in s.execute(
            select(message_table.c.id, message_table.c.lead_id, message_table.c.journey))}
    return list(events), owner


def recount(events: list[Any], owner: dict[str, tuple[str, str]], segment_of: dict[str, str], start: date,
            end: date, *, segment: str | None = None, journey: str | None = None, domain: str | None = None,
            provider: str | None = None, interval: str = "day") -> dict[str, Any]:
    """The report by its definition over messaging's delivery events: a message is sent on its first
    hand-off to the receiving server and delivered on its first one not refused at RCPT (a refusal is
    recorded as a send and an smtp hard bounce at the same instant); every bounce and complaint event
    on its own day; each under the event's own sending domain and provider."""
    refused = {(e.message_id, e.at) for e in events if e.kind == "hard_bounce" and e.source == "smtp"}
    sent: set[str] = set()
    delivered: set[str] = set()
    counted: list[tuple[date, str, str, str]] = []   # (day, domain, provider, measure)
    for e in events:
        lead_id, j = owner[e.message_id]
        day = e.at.date()
        if not start <= day <= end or (segment is not None and segment_of[lead_id] != segment) \
                or (journey is not None and j != journey) or (domain is not None and e.domain != domain) \
                or (provider is not None and e.provider != provider):
            # Still mark the message's first send/delivery: a later one in range is not its first.
            if e.kind == "sent":
                if (e.message_id, e.at) not in refused:
                    delivered.add(e.message_id)
                sent.add(e.message_id)
            continue
        if e.kind == "sent":
            if e.message_id not in sent:
                counted.append((day, e.domain, e.provider, "sent"))
                sent.add(e.message_id)
            if (e.message_id, e.at) not in refused and e.message_id not in delivered:
                counted.append((day, e.domain, e.provider, "delivered"))
                delivered.add(e.message_id)
        else:
            measure = {"hard_bounce": "hard_bounced", "soft_bounce": "soft_bounced", "complaint": "complaints"}[e.kind]
            counted.append((day, e.domain, e.provider, measure))
    zero = dict.fromkeys(M, 0)
    total = dict(zero)
    by: dict[str, dict[str, dict[str, int]]] = {"domain": {}, "provider": {}}
    points: dict[date, dict[str, int]] = {}
    for day, dom, prov, measure in counted:
        total[measure] += 1
        by["domain"].setdefault(dom, dict(zero))[measure] += 1
        by["provider"].setdefault(prov, dict(zero))[measure] += 1
        key = reports.week_of(day) if interval == "week" else day
        points.setdefault(key, dict(zero))[measure] += 1
    return {"totals": reports.deliverability_row({}, total),
            "by_domain": [reports.deliverability_row({"domain": k}, v) for k, v in sorted(by["domain"].items())],
            "by_provider": [reports.deliverability_row({"provider": k}, v)
                            for k, v in sorted(by["provider"].items())],
            "points": [{"t": k.isoformat(), **v} for k, v in sorted(points.items())], "interval": interval}


async def test_deliverability_equals_a_recount_of_messagings_records(messaging: InProc, settings: Settings) -> None:
    rnd = random.Random(20)
    applied = await _history(messaging, rnd)
    events, owner = _raw(messaging)
    kinds: dict[tuple[str, str], int] = defaultdict(int)
    for e in events:
        kinds[(e.kind, e.source)] += 1
    # The history holds what the figures distinguish: RCPT refusals, DSN hard bounces, soft bounces
    # (retried ones and ones at the suppression count), complaints, duplicates the guards ignored.
    assert kinds[("hard_bounce", "smtp")] > 0 and kinds[("hard_bounce", "dsn")] > 0, kinds
    assert kinds[("soft_bounce", "dsn")] > 3 and kinds[("complaint", "dsn")] > 0, kinds
    assert applied["hard_bounce"] + applied["complaint"] > kinds[("hard_bounce", "dsn")] + kinds[("complaint", "dsn")]
    resent: dict[str, int] = defaultdict(int)
    for e in events:
        resent[e.message_id] += e.kind == "sent"
    assert max(resent.values()) > 1                     # messages sent again after a soft bounce
    stream = _bus(messaging)
    assert {m["type"] for m in stream} >= {"email_sent", "email_hard_bounced", "email_soft_bounced", "spam_reported"}
    assert any(m["type"] == "email_hard_bounced" and m["properties"].get("bounce") == "soft" for m in stream)
    segment_of = {lead: v["segment"] for lead, v in messaging.scoring.leads.items()}
    # Heard with duplicates of bus messages (a republished outbox) and in random batches with crashes.
    noisy = list(stream) + rnd.sample(stream, len(stream) // 3)
    noisy.sort(key=lambda m: (m["occurred_at"], rnd.random()))
    days = sorted({e.at.date() for e in events})
    first, last = days[0], days[-1]
    cases: list[dict[str, Any]] = [
        {}, {"start": days[1], "end": days[1]}, {"start": days[1], "end": last}, {"segment": "family"},
        {"segment": ""}, {"journey": "family"}, {"provider": "gmail"}, {"provider": "other", "segment": "entrepreneur"},
        {"domain": "borderbridge.example"}, {"domain": "nowhere.example"}, {"interval": "week"},
        {"start": date(2020, 1, 1), "end": date(2020, 2, 1)}]
    db = open_database(settings, service="analytics", migrations_dir=MIGRATIONS)
    try:
        def check() -> None:
            with db.session() as s:
                for case in cases:
                    start, end = case.get("start", first), case.get("end", last)
                    q = storage.Query(start, end, case.get("segment"), case.get("journey"))
                    got = storage.deliverability_report(s, q, case.get("domain"), case.get("provider"),
                                                        case.get("interval", "day"))
                    expected = recount(events, owner, segment_of, start, end, segment=case.get("segment"),
                                       journey=case.get("journey"), domain=case.get("domain"),
                                       provider=case.get("provider"), interval=case.get("interval", "day"))
                    assert got == expected, (case, {k: (got[k], expected[k]) for k in got if got[k] != expected[k]})
        assert feed(db, noisy, rnd) > 0
        check()
        with db.session() as s:
            whole = storage.deliverability_report(s, storage.Query(first, last), None, None, "day")
        t = whole["totals"]
        assert t["sent"] > t["delivered"] > 0 and t["hard_bounced"] and t["soft_bounced"] and t["complaints"]
        assert {r["provider"] for r in whole["by_provider"]} >= {"gmail", "yahoo", "microsoft", "other"}
        assert len(whole["points"]) == DAYS
        feed(db, stream, random.Random(7))              # the whole stream heard again: nothing changes
        check()
        with db.session() as s:
            storage.rebuild(s)
        check()
    finally:
        db.close()


def test_a_callers_spam_report_without_a_provider_is_no_deliverability_fact() -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC).isoformat()
    base = {"id": "e1", "lead_id": "a", "occurred_at": at, "lead": {"id": "a"}}
    assert from_bus({**base, "type": "spam_reported", "properties": {}}) is None
    assert from_bus({**base, "type": "email_soft_bounced", "properties": {"message_id": "m"}}) is None
    fact = from_bus({**base, "type": "spam_reported", "properties": {"message_id": "m", "provider": "gmail",
                                                                     "sending_domain": "b.example"}})
    assert fact is not None and (fact.kind, fact.provider, fact.domain) == ("complaint", "gmail", "b.example")
    bounced = from_bus({**base, "type": "email_hard_bounced", "properties": {"message_id": "m", "bounce": "soft"}})
    assert bounced is not None and bounced.bounce == "soft"


async def test_the_http_report_over_the_bus_equals_the_recount(messaging: InProc, settings: Settings) -> None:
    """The same figures through the real bus, the analytics service and the gateway, JSON and CSV."""
    applied = await _history(messaging, random.Random(21))
    assert applied["soft_bounce"] > 0
    events, owner = _raw(messaging)
    segment_of = {lead: v["segment"] for lead, v in messaging.scoring.leads.items()}
    stream = _bus(messaging)
    redis = aioredis.Redis.from_url(settings.redis_url)
    service = await start_service("analytics", settings)
    try:
        publisher = Publisher(redis, settings.bus_shards)
        await publisher.publish([BusMessage.from_dict(m) for m in stream])
        await publisher.publish([BusMessage.from_dict(m) for m in stream[: len(stream) // 2]])  # republished
        await settle(service)
        addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
        addrs["analytics_addr"] = service.address
        app = create_app(settings.with_overrides(api_key="test-key", **addrs))
        for s in SERVICES:
            app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))
        days = sorted({e.at.date() for e in events})
        span = {"from": f"{days[0].isoformat()}T00:00:00Z", "to": f"{days[-1].isoformat()}T23:59:59Z"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw",
                                     headers={"Authorization": "Bearer test-key"}) as http:
            got = await http.get("/v1/analytics/deliverability", params=span)
            assert got.status_code == 200, got.text
            assert got.json() == recount(events, owner, segment_of, days[0], days[-1])
            # The body is the one the OpenAPI document describes (what the fuzz test holds every answer to).
            documented = (await http.get("/openapi.json")).json()["paths"]["/v1/analytics/deliverability"]["get"]
            jsonschema_rs.validate(documented["responses"]["200"]["content"]["application/json"]["schema"],
                                   got.json())
            gmail = await http.get("/v1/analytics/deliverability", params={**span, "provider": "gmail",
                                                                           "segment": "family", "interval": "week"})
            assert gmail.json() == recount(events, owner, segment_of, days[0], days[-1], provider="gmail",
                                           segment="family", interval="week")
            for table in ("by_provider", "by_domain", "points"):
                as_csv = await http.get("/v1/analytics/deliverability", params={**span, "format": "csv",
                                                                                "table": table})
                assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
                rows = list(csv.DictReader(io.StringIO(as_csv.text)))
                assert rows == [{k: "" if v is None else str(v) for k, v in row.items()}
                                for row in got.json()[table]] and rows
    finally:
        await service.stop(grace=0.2)
        await redis.aclose()


async def test_through_the_real_scoring_the_bus_carries_what_messaging_recorded(settings: Settings,
                                                                                 tmp_path: Path) -> None:
    """Real scoring, messaging and analytics: messaging's feedback goes to scoring, which publishes it; a
    provider's webhook brings hard and soft bounces (the soft one retried) and complaints, some twice;
    the report equals the recount of messaging's records."""
    from nurture.clock import VirtualClock
    from nurture.redisconn import connect_sync
    from services.messaging.server import MIGRATIONS as MESSAGING_MIGRATIONS
    from services.messaging.smtp_sink import SmtpSink

    sink = SmtpSink(tmp_path / "mail").start()
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    cfg = settings.with_overrides(**addrs).with_overrides(smtp_url=sink.url)
    running = []
    try:
        for name in ("scoring", "messaging", "analytics"):
            service = await start_service(name, cfg)
            running.append(service)
            cfg = cfg.with_overrides(**{f"{name}_addr": service.address})
        app = create_app(cfg.with_overrides(api_key="test-key"))
        for s in SERVICES:
            app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))

        async def settle_all() -> None:
            for service in running:     # messaging feeds scoring, scoring publishes, analytics hears
                await settle(service)

        leads = {f"e{n}": (f"e{n}@{d}", seg) for n, (d, seg) in enumerate(
            [("gmail.com", "family"), ("yahoo.com", "family"), ("outlook.com", "entrepreneur"),
             ("example.org", "entrepreneur"), ("gmail.com", "skilled_professional"), ("hotmail.com", "family")])}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw",
                                     headers={"Authorization": "Bearer test-key"}) as http:
            for lead_id, (email, segment) in leads.items():
                r = await http.post("/v1/leads", json={"id": lead_id, "email": email, "segment": segment,
                                                       "timezone": "UTC", "consent": {"email": True}})
                assert r.status_code in (200, 201), r.text
            async with mesh_channel(cfg.messaging_addr) as ch:
                stub = messaging_pb2_grpc.MessagingStub(ch)
                sent: dict[str, str] = {}
                for lead_id in leads:
                    for n in range(2):
                        reply = await stub.Send(messaging_pb2.SendRequest(
                            dedupe_key=f"{lead_id}:lead_magnet:1:email_01:{n}", lead_id=lead_id,
                            journey="lead_magnet", journey_version=1, step="email_01", channel="email",
                            template="lead_magnet.email_01", category="transactional", context_json="{}"), timeout=10)
                        sent[f"{lead_id}:{n}"] = reply.message_id
            await settle_all()

            def event(key: str, kind: str) -> dict[str, str]:
                return {"message_id": sent[key], "recipient": leads[key.split(":")[0]][0], "kind": kind,
                        "detail": kind}
            batch = [event("e0:0", "hard_bounce"), event("e0:0", "hard_bounce"), event("e1:0", "soft_bounce"),
                     event("e2:0", "complaint"), event("e2:0", "complaint"), event("e3:1", "soft_bounce"),
                     event("e5:0", "complaint")]
            r = await http.post("/v1/deliverability/events", json={"events": batch})
            assert r.status_code == 200 and r.json()["applied"] == 5, r.text
            await settle_all()
            VirtualClock(connect_sync(cfg)).advance(3601)           # the soft bounces' retries go
            await settle_all()
            r = await http.post("/v1/deliverability/events", json={"events": [event("e1:0", "soft_bounce")]})
            assert r.status_code == 200 and r.json()["applied"] == 1
            await settle_all()
            await settle_all()
            messaging_db = open_database(cfg, service="messaging", migrations_dir=MESSAGING_MIGRATIONS)
            try:
                with messaging_db.session() as ses:
                    events = list(ses.execute(select(delivery_events).order_by(delivery_events.c.id)).all())
                    owner = {r.id: (r.lead_id, r.journey) for r in ses.execute(
                        select(message_table.c.id, message_table.c.lead_id, message_table.c.journey))}
            finally:
                messaging_db.close()
            kinds = sorted(e.kind for e in events)
            assert kinds.count("sent") == 14 and kinds.count("soft_bounce") == 3, kinds   # two resends
            days = sorted({e.at.date() for e in events})
            span = {"from": f"{days[0].isoformat()}T00:00:00Z", "to": f"{days[-1].isoformat()}T23:59:59Z"}
            segment_of = {lead_id: seg for lead_id, (_, seg) in leads.items()}
            got = (await http.get("/v1/analytics/deliverability", params=span)).json()
            assert got == recount(events, owner, segment_of, days[0], days[-1])
            assert got["totals"]["soft_bounced"] == 3 and got["totals"]["hard_bounced"] == 1
            assert got["totals"]["complaints"] == 2 and got["totals"]["sent"] == 12
            family = (await http.get("/v1/analytics/deliverability", params={**span, "segment": "family"})).json()
            assert family == recount(events, owner, segment_of, days[0], days[-1], segment="family")
    finally:
        for service in reversed(running):
            await service.stop(grace=0.2)
        sink.stop()
