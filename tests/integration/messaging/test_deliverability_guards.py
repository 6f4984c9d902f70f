"""The guards and the warm-up on the in-process engine (real Redis, SQLite, SMTP sink) with a small
deliverability policy: a provider over the complaint line pauses its nurture mail while transactional
mail continues; resuming is explicit and judged on what follows; a warming domain's daily limit holds
the next nurture email until tomorrow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from nurture.clock import VirtualClock
from nurture.redisconn import connect, connect_sync, lead_key
from nurture.settings import Settings
from services.messaging.app.deliverability import Deliverability
from services.messaging.deliverability_store import DeliverabilityStore
from services.messaging.domain.bounces import DeliverabilityPolicy, Rates, Report, Warmup, WarmupStep
from services.messaging.domain.dkim import NO_SIGNER
from services.messaging.domain.policy import Policy
from services.messaging.smtp_sink import SmtpSink
from tests.integration.messaging.conftest import InProc
from tests.integration.messaging.harness import InProcessLeads, ScoringStub, make_lead

pytestmark = pytest.mark.anyio
ALL_DAY = Policy(window_start=time(0, 0), window_end=time(23, 59, 59), min_gap_s=0.0, cap_per_day=50, cap_per_week=50)
SMALL = DeliverabilityPolicy(
    providers={"gmail": ["gmail.com"], "yahoo": ["yahoo.com"]}, min_sent=10,
    warn=Rates(complaint_rate=0.05, hard_bounce_rate=0.5), pause=Rates(complaint_rate=0.1, hard_bounce_rate=0.9),
    warmup=Warmup(domains=["borderbridge.example"], schedule=[WarmupStep(day=1, limit=2), WarmupStep(day=2, limit=3)]))


async def _inproc(settings: Settings, tmp_path: Path, policy: DeliverabilityPolicy) -> AsyncIterator[InProc]:
    from nurture.db import open_database
    from services.messaging.app.channels import Channels
    from services.messaging.app.delivery import Delivery
    from services.messaging.domain.catalog import Catalog
    from services.messaging.server import MIGRATIONS
    from services.messaging.storage import Store

    scoring = ScoringStub()
    sink = SmtpSink(tmp_path / "mail").start()
    cfg = settings.with_overrides(smtp_url=sink.url, public_url="https://nurture.example")
    db = open_database(cfg, service="messaging", migrations_dir=MIGRATIONS)
    redis = connect(cfg)
    clock = VirtualClock(connect_sync(cfg))
    store = Store(db.session)
    guards = Deliverability(store=store, dstore=DeliverabilityStore(db.session), db=db, policy=policy,
                            dkim=NO_SIGNER, bounce_domain="borderbridge.example", secrets=("test-secret",),
                            now=clock.now, redis=redis)
    engine = Delivery(settings=cfg, clock=clock, db=db, store=store, catalog=Catalog(), redis=redis,
                      leads=InProcessLeads(scoring), policy=ALL_DAY, deliverability=guards)  # type: ignore[arg-type]
    try:
        yield InProc(cfg, scoring, sink, engine, Channels(engine, None), clock, db)
    finally:
        await engine.close()
        await redis.aclose()
        db.close()
        sink.stop()


@pytest.fixture
async def guarded(settings: Settings, tmp_path: Path) -> AsyncIterator[InProc]:
    no_warmup = SMALL.model_copy(update={"warmup": Warmup()})
    async for inproc in _inproc(settings, tmp_path, no_warmup):
        yield inproc


@pytest.fixture
async def warming(settings: Settings, tmp_path: Path) -> AsyncIterator[InProc]:
    async for inproc in _inproc(settings, tmp_path, SMALL):
        yield inproc


async def _status(inproc: InProc, lead_id: str, template: str) -> tuple[str, str]:
    row = (await inproc.messages(lead_id))[template]
    return row.status, row.reason


async def test_a_provider_over_the_complaint_line_pauses_nurture_and_not_transactional(guarded: InProc) -> None:
    guards: Deliverability = guarded.engine.deliverability
    for n in range(10):
        guarded.scoring.add(make_lead(f"g{n}", email=f"g{n}@gmail.com", timezone="UTC"))
        await guarded.send(f"g{n}", "lead_magnet.email_01")
    await guarded.settle()
    rows = {lead: (await guarded.messages(lead))["lead_magnet.email_01"] for lead in ("g0", "g1")}
    # One complaint in ten sends is 10%: the pause line exactly (at, not above, pauses).
    await guards.apply([(rows["g0"].id, Report("complaint", "g0@gmail.com", "", "feedback: abuse"))],
                       source="arf")
    paused = await guards.pauses()
    assert [p.provider for p in paused] == ["gmail"] and "10.00%" in paused[0].why
    assert guarded.engine.db.counters["deliverability.pauses"] == 1
    guarded.scoring.add(make_lead("ana", email="ana@gmail.com", timezone="UTC"))
    guarded.scoring.add(make_lead("yu", email="yu@yahoo.com", timezone="UTC"))
    await guarded.send("ana", "family.email_01")                 # nurture to gmail: held
    await guarded.send("yu", "family.email_01")                  # nurture to yahoo: goes
    await guarded.send("ana", "lead_magnet.email_01", key="t")   # transactional to gmail: goes
    await guarded.settle()
    status, reason = await _status(guarded, "ana", "family.email_01")
    assert status == "scheduled" and "gmail is paused" in reason
    assert (await _status(guarded, "yu", "family.email_01"))[0] == "sent"
    assert (await _status(guarded, "ana", "lead_magnet.email_01"))[0] == "sent"
    # Resumed explicitly (and recorded): the held email goes at its next look.
    assert await guards.resume("gmail", "editor key abc")
    assert not await guards.resume("gmail", "editor key abc")    # not paused any more
    assert await guards.pauses() == []
    guarded.clock.advance(SMALL.paused_recheck_s)
    await guarded.settle()
    assert (await _status(guarded, "ana", "family.email_01"))[0] == "sent"
    # Judged on what follows the resume: the old complaint does not pause it again at the next report.
    await guards.apply([(rows["g1"].id, Report("soft_bounce", "g1@gmail.com", "4.2.2", "full"))], source="dsn")
    assert await guards.pauses() == []


async def test_below_the_complaint_line_nothing_pauses(guarded: InProc) -> None:
    guards: Deliverability = guarded.engine.deliverability
    for n in range(11):
        guarded.scoring.add(make_lead(f"g{n}", email=f"g{n}@gmail.com", timezone="UTC"))
        await guarded.send(f"g{n}", "lead_magnet.email_01")
    await guarded.settle()
    first = (await guarded.messages("g0"))["lead_magnet.email_01"]
    await guards.apply([(first.id, Report("complaint", "g0@gmail.com", "", "abuse"))], source="arf")
    assert await guards.pauses() == []        # 1 in 11 is 9.1%, under 10%
    assert guarded.engine.db.counters["deliverability.warnings"] >= 1   # but over the 5% warning


async def test_a_warming_domain_sends_its_days_limit_and_holds_the_rest_until_tomorrow(warming: InProc) -> None:
    for n in range(3):
        warming.scoring.add(make_lead(f"w{n}", email=f"w{n}@yahoo.com", timezone="UTC"))
        await warming.send(f"w{n}", "family.email_01")
    await warming.settle()
    statuses = [(await _status(warming, f"w{n}", "family.email_01"))[0] for n in range(3)]
    assert sorted(statuses) == ["scheduled", "sent", "sent"]           # day 1: 2
    held = statuses.index("scheduled")
    row = (await warming.messages(f"w{held}"))["family.email_01"]
    assert "warming up (day 1: 2 a day)" in row.reason
    # The held message took no slot of the lead's own caps.
    caps = connect_sync(warming.settings)
    assert caps.zscore(lead_key(f"w{held}", "msg:nurture"), row.id) is None
    assert caps.zscore(lead_key(f"w{statuses.index('sent')}", "msg:nurture"),
                       (await warming.messages(f"w{statuses.index('sent')}"))["family.email_01"].id) is not None
    tomorrow = datetime.fromtimestamp((int(warming.clock.now().timestamp()) // 86400 + 1) * 86400, UTC)
    assert row.due_at.replace(tzinfo=UTC) == tomorrow
    # Transactional mail is not held by the ramp.
    warming.scoring.add(make_lead("t", email="t@yahoo.com", timezone="UTC"))
    await warming.send("t", "lead_magnet.email_01")
    await warming.settle()
    assert (await _status(warming, "t", "lead_magnet.email_01"))[0] == "sent"
    warming.clock.set(tomorrow + timedelta(seconds=1))
    await warming.settle()
    assert (await _status(warming, f"w{held}", "family.email_01"))[0] == "sent"   # day 2: its limit is 3
    state = await warming.engine.deliverability.warmup_state(warming.clock.now())
    assert state == [("borderbridge.example", 2, 3, 1)]


async def test_a_recipient_refused_at_rcpt_is_a_send_and_a_hard_bounce_in_the_rates(guarded: InProc) -> None:
    guards: Deliverability = guarded.engine.deliverability
    guarded.scoring.add(make_lead("r", email="r@reject.invalid", timezone="UTC"))
    guarded.scoring.add(make_lead("g", email="g@gmail.com", timezone="UTC"))
    await guarded.send("r", "lead_magnet.email_01")
    await guarded.send("g", "lead_magnet.email_01")
    await guarded.settle()
    assert (await _status(guarded, "r", "lead_magnet.email_01"))[0] == "failed"
    rates = await guards.rates(guarded.clock.now())
    assert {(domain, provider): (c.sent, c.hard) for (domain, provider), c in rates.items()} == {
        ("borderbridge.example", "other"): (1, 1), ("borderbridge.example", "gmail"): (1, 0)}
