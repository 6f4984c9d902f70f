"""Operations: timers and dead letters, over real services. A CRM push the CRM refused (HTTP 400) is
listed as crm_sync's dead letter; a viewer sees it without a retry button and is refused a retry; an
editor's retry, once the CRM accepts again, reaches the CRM (its write count grows, the push is done),
leaves the dead letters, notes the retry on the lead's timeline and is recorded in the audit with its
outcome; a bad or unknown id is refused. The journeys service's timers show how many wait, how many are
due now (late: the clock moved on without the service running them) and when the next is due."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest
import redis

from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.clock import VirtualClock
from nurture.settings import SERVICES, Settings
from tests.conftest import free_port
from tests.integration.console.conftest import KEYS, app_for, console_settings, csrf_of, sign_in
from tests.integration.console.mesh import ConsoleMesh, console_mesh
from tests.integration.console.test_analytics_page import cells
from tests.integration.crm_sync.conftest import Mesh, emulator, mesh  # noqa: F401  (fixtures)
from tests.integration.crm_sync.test_faults import new_contact

pytestmark = pytest.mark.anyio


@pytest.fixture
async def crm_console(mesh: Mesh) -> AsyncIterator[tuple[httpx.AsyncClient, Mesh]]:  # noqa: F811
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    addrs.update(crm_sync_addr=mesh.running.address, scoring_addr=mesh.settings.scoring_addr)
    app = app_for(console_settings(mesh.settings, **addrs))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        client.app = app  # type: ignore[attr-defined]  # for the browser test
        yield client, mesh


def letters(page: str) -> list[tuple[str, str, str]]:
    return re.findall(r'<tr data-service="([^"]+)" data-letter="([^"]+)" data-kind="([^"]+)">', page)


async def test_a_dead_crm_push_is_retried_delivered_and_audited(crm_console: tuple[httpx.AsyncClient, Mesh]) -> None:
    client, crm = crm_console
    crm.emulator.fault(mode="fail", status=400)
    lead = await new_contact(crm, 7)
    await crm.settle()
    assert [i for i in await crm.timeline(lead) if i.type == "push_dead"]

    await sign_in(client, KEYS["viewer"])
    page = await client.get("/console/operations")
    assert page.status_code == 200, page.text
    [(service, letter, kind)] = letters(page.text)
    assert (service, kind) == ("crm_sync", "crm_push") and letter.startswith("crm_push:")
    row = [r for r in cells(page.text, "dead-letters") if r[0] == "crm_sync"][0]
    assert row[2] == lead and "HTTP 400" in row[4]
    assert 'action="/console/operations/dead-letters/retry"' not in page.text  # no button for a viewer
    refused = await client.post("/console/operations/dead-letters/retry",
                                data={"csrf": csrf_of(page.text), "service": "crm_sync", "id": letter})
    assert refused.status_code == 403

    client.cookies.clear()
    await sign_in(client, KEYS["editor"])
    page = await client.get("/console/operations")
    token = csrf_of(page.text)
    assert 'action="/console/operations/dead-letters/retry"' in page.text
    assert (await client.post("/console/operations/dead-letters/retry",
                              data={"service": "crm_sync", "id": letter})).status_code == 403  # no CSRF token
    # Still refused by the CRM: the retry fails, the letter stays dead, the audit says so.
    done = await client.post("/console/operations/dead-letters/retry",
                             data={"csrf": token, "service": "crm_sync", "id": letter})
    assert done.status_code == 303
    page = await client.get(done.headers["location"])
    [entry] = re.findall(r'<tr data-audit="([^"]+)" data-outcome="failed" class="just-done">', page.text)
    assert [x[1] for x in letters(page.text)] == [letter]

    crm.emulator.fault(mode="ok")
    writes = crm.emulator.get("/_emulator/stats")["writes"]
    done = await client.post("/console/operations/dead-letters/retry",
                             data={"csrf": token, "service": "crm_sync", "id": letter})
    assert done.status_code == 303 and done.headers["location"].startswith("/console/operations?audit=")
    page = await client.get(done.headers["location"])
    assert re.search(r'<tr data-audit="[^"]+" data-outcome="delivered" class="just-done">', page.text)
    audit = cells(page.text, "audit-log")
    assert [(a[1].split()[0], a[2], a[3], a[4], a[5]) for a in audit] == [
        ("editor", "retry_dead_letter", "crm_sync", letter, "delivered"),
        ("editor", "retry_dead_letter", "crm_sync", letter, "failed")]
    assert KEYS["editor"] not in page.text  # the key's fingerprint only
    assert letters(page.text) == []
    assert crm.emulator.get("/_emulator/stats")["writes"] > writes  # the CRM got the push
    retried = [json.loads(i.details_json) for i in await crm.timeline(lead) if i.type == "push_retried"]
    assert len(retried) == 2 and all(r["actor"].startswith("editor ") for r in retried)
    # Delivered once: retrying again finds nothing.
    again = await client.post("/console/operations/dead-letters/retry",
                              data={"csrf": token, "service": "crm_sync", "id": letter})
    assert again.status_code == 404
    for form in ({"service": "mail", "id": letter}, {"service": "crm_sync", "id": "<script>"},
                 {"service": "crm_sync", "id": ""}):
        bad = await client.post("/console/operations/dead-letters/retry", data={"csrf": token, **form})
        assert bad.status_code == 422, form


@pytest.fixture
async def journeys_mesh(settings: Settings) -> AsyncIterator[ConsoleMesh]:
    async with console_mesh(settings) as running:
        yield running


async def test_timers_show_waiting_due_and_next(journeys_mesh: ConsoleMesh) -> None:
    client = journeys_mesh.client
    await sign_in(client, KEYS["viewer"])
    page = await client.get("/console/operations")
    row = re.search(r'<tr data-service="journeys" data-queue="journey steps" data-pending="(\d+)" data-due="(\d+)"'
                    r'.*?data-next="([^"]*)"', page.text, re.S)
    assert row, page.text
    pending, due, nxt = int(row.group(1)), int(row.group(2)), row.group(3)
    # Five families wait in the journey (one unsubscribed), each on a timer; settled, nothing is late.
    assert pending >= 5 and due == 0 and nxt
    clock = VirtualClock(redis.Redis.from_url(journeys_mesh.settings.redis_url))
    next_due = datetime.fromisoformat(nxt)
    assert next_due > clock.now()
    clock.set(next_due)  # time reaches the next timer, and the service has not run it yet
    page = await client.get("/console/operations")
    late = re.search(r'<tr data-service="journeys" data-queue="journey steps" data-pending="(\d+)" data-due="(\d+)"'
                     r' class="late">', page.text)
    assert late and int(late.group(1)) == pending and int(late.group(2)) >= 1
    reply = await common_pb2_grpc.AdminStub(journeys_mesh.app.state.mesh.channel("journeys")).Settle(
        common_pb2.SettleRequest(), timeout=30)
    assert reply.work_done >= 1
    page = await client.get("/console/operations")
    assert re.search(r'data-service="journeys" data-queue="journey steps" data-pending="\d+" data-due="0"', page.text)


async def test_retry_from_the_page_in_a_browser(crm_console: tuple[httpx.AsyncClient, Mesh]) -> None:
    from tests.integration.console.browse import browsing  # skips without Chromium or Playwright
    from tests.integration.console.test_browser import ARTIFACTS

    client, crm = crm_console
    crm.emulator.fault(mode="fail", status=400)
    lead = await new_contact(crm, 8)
    await crm.settle()
    crm.emulator.fault(mode="ok")
    async with browsing(client.app, KEYS["editor"]) as (base, w):  # type: ignore[attr-defined]
        await w.open(f"{base}/console/operations", shot="operations-dead-letters")
        row = w.page.locator('#dead-letters tr[data-kind="crm_push"]')
        assert await row.count() == 1 and lead in await row.inner_text()
        await row.locator("button[type=submit]").click()
        await w.page.wait_for_url(re.compile(r".*/console/operations\?audit=.*"))
        await w.page.wait_for_load_state("load")
        await w.page.screenshot(path=str(ARTIFACTS / "operations-retried.png"), full_page=True)
        done = w.page.locator("#audit-log tr.just-done")
        assert await done.get_attribute("data-outcome") == "delivered"
        assert "No dead letter." in await w.page.locator("#dead-letters").inner_text()
        assert await w.page.locator('#timers tr[data-service="crm_sync"]').count() == 1
        assert w.errors == []
