"""The journey page's graph against the API and a recount: leads run through real journeys (the journeys
service over gRPC, messaging's contract played by the recording fake), then every step's count on the
page equals `/v1/journeys/{key}/analytics` and a count of the journeys service's own step-run records."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
import redis
from sqlalchemy import create_engine, select

from nurture import redisconn
from nurture.api.common.v1 import common_pb2_grpc
from nurture.bus import Publisher
from nurture.clock import VirtualClock
from nurture.settings import SERVICES, Settings
from services.journeys.storage import StepRunRow
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.console.conftest import KEYS, app_for, console_settings, csrf_of, sign_in
from tests.integration.journeys.fakes import Recorder, advance, lead, publish, settle, start_fakes

pytestmark = pytest.mark.anyio
STEP = re.compile(r'data-step="([^"]+)" data-entered="(\d+)"')


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    rec = Recorder()
    mport, cport = free_port(), free_port()
    messaging, crm = await start_fakes(rec, messaging_port=mport, crm_port=cport)
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    addrs.update(messaging_addr=f"127.0.0.1:{mport}", crm_sync_addr=f"127.0.0.1:{cport}")
    journeys = await start_service("journeys", settings.with_overrides(**addrs))
    addrs["journeys_addr"] = journeys.address
    channel = mesh_channel(journeys.address)
    admin = common_pb2_grpc.AdminStub(channel)
    client = redisconn.connect(settings)
    pub = Publisher(client, settings.bus_shards)
    clock = VirtualClock(redis.Redis.from_url(settings.redis_url))
    # Six families enter; two open their first email, one unsubscribes (an exit with its reason).
    families = [lead(f"f-{i}", "family") for i in range(6)]
    for person in families:
        await publish(pub, clock, person, "lead_created")
    await settle(admin)
    for sent in [r for r in rec.sends if r.lead_id in ("f-0", "f-1")][:2]:
        await publish(pub, clock, families[int(sent.lead_id[-1])], "email_opened",
                      message_id=rec.delivered[sent.dedupe_key])
    await publish(pub, clock, families[5], "unsubscribed")
    await advance(admin, clock, 9 * 86400)
    app = app_for(console_settings(settings, **addrs))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        yield http, settings.with_overrides(**addrs)
    await channel.close()
    await client.aclose()
    await journeys.stop(grace=0.2)
    await messaging.stop(0)
    await crm.stop(0)


def recount(settings: Settings, journey: str) -> dict[str, int]:
    """Step runs straight from the journeys service's records: what ran, not what a report says."""
    engine = create_engine(settings.database_url_for("journeys"))
    try:
        with engine.connect() as db:
            rows = db.execute(select(StepRunRow.step, StepRunRow.status).where(StepRunRow.journey == journey))
            return dict(Counter(step for step, status in rows if status != "deferred"))
    finally:
        engine.dispose()


async def test_graph_counts_equal_the_api_and_a_recount(running: tuple[httpx.AsyncClient, Settings]) -> None:
    client, settings = running
    await sign_in(client, KEYS["viewer"])
    page = await client.get("/console/journeys/family")
    assert page.status_code == 200, page.text
    shown = {step: int(n) for step, n in STEP.findall(page.text)}
    api = (await client.get("/v1/journeys/family/analytics", headers={"Authorization": f"Bearer {KEYS['viewer']}"}))
    assert api.status_code == 200
    by_api = {s["step"]: s["entered"] for s in api.json()["steps"]}
    ran = recount(settings, "family")
    assert sum(ran.values()) > 6  # the walk went past the first step, so the comparison means something
    # Every step of the definition is drawn; the ones that ran show the API's count and the recount.
    assert set(by_api) <= set(shown)
    assert {s: n for s, n in shown.items() if n} == {s: n for s, n in by_api.items() if n} == ran
    # Opens and exits by reason as the API says them.
    opened = {s["step"]: s["opened"] for s in api.json()["steps"] if s["opened"]}
    assert sum(opened.values()) == 2
    for step, n in opened.items():
        block = page.text.split(f'data-step="{step}"', 1)[1].split('data-step="', 1)[0]
        assert f'data-measure="opened" href="/console/leads?journey=family&amp;step={step}">opened <b>{n}</b>' in block
    for reason, n in api.json()["exit_reasons"].items():
        assert f'data-reason="{reason}">{reason} {n}<' in page.text
    # The journeys list shows the same enrolment as the report.
    listing = await client.get("/console/journeys")
    assert f'href="/console/leads?journey=family" data-enrolled="{api.json()["enrolled"]}"' in listing.text


async def test_publish_from_the_console_by_role(running: tuple[httpx.AsyncClient, Settings]) -> None:
    client, _ = running
    await sign_in(client, KEYS["viewer"])
    page = await client.get("/console/journeys/webinar")
    assert 'id="publish-form"' not in page.text  # a viewer is not offered the form
    r = await client.post("/console/journeys/webinar/publish", data={"version": "1", "csrf": csrf_of(page.text)})
    assert r.status_code == 403
    client.cookies.clear()
    await sign_in(client, KEYS["editor"])
    page = await client.get("/console/journeys/webinar")
    assert 'id="publish-form"' in page.text
    r = await client.post("/console/journeys/webinar/publish",
                          data={"version": "1", "dry_run": "on", "csrf": csrf_of(page.text)})
    assert r.status_code == 200 and "not published (dry run)" in r.text


async def test_operations_page_shows_health_and_bus_backlog(running: tuple[httpx.AsyncClient, Settings]) -> None:
    client, _ = running
    await sign_in(client, KEYS["viewer"])
    page = await client.get("/console/operations")
    assert page.status_code == 200
    assert 'data-service="journeys" data-status="SERVING"' in page.text
    assert re.search(r'data-service="scoring" data-status="(?!SERVING")', page.text)  # not started here
    # The journeys service consumed everything published above: nothing waits, nothing is dead.
    row = re.search(r'<tr data-group="journeys">(.*?)</tr>', page.text, re.S)
    assert row is not None
    assert re.findall(r'<td class="n">(\d+)</td>', row.group(1)) == ["0", "0", "0"]
