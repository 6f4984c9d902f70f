"""The A/B experiments pages over the real messaging service: a template whose variant `a` is clicked by
every lead sent it and variant `b` by none is listed with the AbReport's figures (significant, `a` the
winner) and links to the template's page; its report page shows each variant's figures as the API's
/v1/templates/{key}/ab-report gives them, and draws them as a chart in Chromium.

The list asks messaging for the reports of the templates with variants alone (ListTemplates with_variants),
and a report that fails or outlasts the deadline is a row marked unavailable, not a page failed with 503:
`faults` makes the real messaging servicer's AbReport fail or hang for the templates a test names."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from nurture.api.messaging.v1 import messaging_pb2
from nurture.settings import SERVICES, Settings
from services.messaging.servicer import MessagingServicer
from tests.conftest import free_port
from tests.integration.console.conftest import KEYS, app_for, console_settings, sign_in
from tests.integration.console.test_analytics_page import cells
from tests.integration.messaging.conftest import Mesh, running_mesh
from tests.integration.messaging.harness import make_lead

pytestmark = pytest.mark.anyio
TEMPLATE = "skilled_professional.email_01"
LEADS = 30
# The catalog's templates with variants (services/messaging/data/templates/catalog.yaml): 3 of its ~150.
WITH_VARIANTS = {TEMPLATE, "family.email_01", "cart_abandonment.email_04"}


class Faults:
    """What the messaging servicer's AbReport does per template: `fail` aborts it (INTERNAL), `hang` holds
    it until released (the gateway's deadline passes first); every template asked is recorded."""

    def __init__(self) -> None:
        self.plan: dict[str, str] = {}
        self.asked: list[str] = []
        self.release = asyncio.Event()


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[Faults]:
    """Set before the service starts: gRPC binds the servicer's methods when the server is made."""
    found = Faults()
    real = MessagingServicer.AbReport

    async def ab_report(self: MessagingServicer, request: messaging_pb2.AbReportRequest,
                        context: grpc.aio.ServicerContext) -> messaging_pb2.AbReportReply:
        found.asked.append(request.template)
        fault = found.plan.get(request.template)
        if fault == "fail":
            await context.abort(grpc.StatusCode.INTERNAL, "injected failure")
        if fault == "hang":
            await found.release.wait()
        return await real(self, request, context)
    monkeypatch.setattr(MessagingServicer, "AbReport", ab_report)
    yield found
    found.release.set()


@pytest.fixture
async def experiment(settings: Settings, tmp_path: Path, faults: Faults
                     ) -> AsyncIterator[tuple[httpx.AsyncClient, Mesh]]:
    async with running_mesh(settings, tmp_path) as mesh:
        for i in range(LEADS):
            mesh.scoring.add(make_lead(f"ab{i}"))
            await mesh.send(f"ab{i}", TEMPLATE)
        await mesh.settle()
        variant = {}
        for i in range(LEADS):
            [msg] = await mesh.messages(f"ab{i}")
            variant[msg.lead_id] = msg.variant
        assert set(variant.values()) == {"a", "b"}
        for mail in mesh.mails():
            lead_id = str(mail["To"]).split("@")[0].rsplit("<", 1)[-1]
            if variant.get(lead_id) != "a":
                continue
            body = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
            token = re.search(r"https://nurture\.example/t/c/(\S+)", body).group(1)  # type: ignore[union-attr]
            await mesh.stub.Track(messaging_pb2.TrackRequest(token=token, kind="click"), timeout=5)
        await mesh.settle()
        addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
        addrs["messaging_addr"] = mesh.running.address
        app = app_for(console_settings(settings, **addrs))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            await sign_in(client, KEYS["viewer"])
            client.app = app  # type: ignore[attr-defined]  # for the browser test
            yield client, mesh


async def test_experiments_list_and_report_show_the_ab_figures(
        experiment: tuple[httpx.AsyncClient, Mesh]) -> None:
    client, _ = experiment
    api = (await client.get(f"/v1/templates/{TEMPLATE}/ab-report",
                            headers={"Authorization": f"Bearer {KEYS['viewer']}"})).json()
    assert api["significant"] and api["winner"] == "a", api
    listing = await client.get("/console/experiments")
    assert listing.status_code == 200, listing.text
    row = re.search(rf'<tr data-template="{re.escape(TEMPLATE)}" data-significant="(\w+)">(.*?)</tr>', listing.text,
                    re.S)
    assert row and row.group(1) == "yes"
    assert f'href="/console/templates/{TEMPLATE}"' in row.group(2)
    shown = [c for c in cells(listing.text, "experiments") if c[0] == TEMPLATE][0]
    assert shown[1:7] == [str(len(api["variants"])), str(sum(v["sent"] for v in api["variants"])), api["metric"],
                          "a", f"{api['p_value']:.4f}", "yes"]
    # Only templates with variants are experiments: a single-version template is not listed.
    assert 'data-template="triggers.pricing_page"' not in listing.text
    report = await client.get(f"/console/experiments/{TEMPLATE}")
    assert report.status_code == 200
    assert [(r[0], int(r[1]), int(r[2]), int(r[3])) for r in cells(report.text, "variants")] == \
        [(v["name"], v["sent"], v["opened"], v["clicked"]) for v in api["variants"]]
    assert 'data-winner="a"' in report.text and api["explanation"] in report.text.replace("&#39;", "'")


async def test_only_templates_with_variants_are_asked_and_a_failed_report_is_a_row(
        experiment: tuple[httpx.AsyncClient, Mesh], faults: Faults) -> None:
    client, mesh = experiment
    listed = await mesh.stub.ListTemplates(messaging_pb2.ListTemplatesRequest(with_variants=True), timeout=5)
    assert {i.key for i in listed.items} == set(listed.keys) == WITH_VARIANTS
    assert all(i.variants == 2 for i in listed.items)
    everything = await mesh.stub.ListTemplates(messaging_pb2.ListTemplatesRequest(), timeout=5)
    assert len(everything.items) > 100 and {i.key for i in everything.items if i.variants} == WITH_VARIANTS

    faults.plan = {"family.email_01": "fail", "cart_abandonment.email_04": "hang"}
    faults.asked.clear()
    listing = await client.get("/console/experiments")
    assert listing.status_code == 200, listing.text
    assert sorted(faults.asked) == sorted(WITH_VARIANTS)   # not one AbReport per template of the catalog
    rows = {c[0]: c for c in cells(listing.text, "experiments")}
    assert set(rows) == WITH_VARIANTS
    assert rows[TEMPLATE][4] == "a" and rows[TEMPLATE][6] == "yes"   # the answered report keeps its figures
    for key in ("family.email_01", "cart_abandonment.email_04"):
        assert rows[key][1] == "2" and "report unavailable" in rows[key][2], rows[key]
        assert f'<tr data-template="{key}" data-significant="unknown" class="unavailable">' in listing.text


async def test_an_unknown_template_is_404(experiment: tuple[httpx.AsyncClient, Mesh]) -> None:
    client, _ = experiment
    assert (await client.get("/console/experiments/nothing.here")).status_code == 404


async def test_the_report_draws_its_chart_in_a_browser(experiment: tuple[httpx.AsyncClient, Mesh]) -> None:
    from tests.integration.console.browse import browsing  # skips without Chromium or Playwright

    client, _ = experiment
    async with browsing(client.app, KEYS["viewer"]) as (base, w):  # type: ignore[attr-defined]
        await w.open(f"{base}/console/experiments", shot="experiments")
        await w.page.click(f'tr[data-template="{TEMPLATE}"] a.report-link')
        await w.page.wait_for_load_state("load")
        await w.open(w.page.url, shot="experiment")
        bars = await w.page.evaluate("() => Chart.getChart(document.getElementById('ab-chart')).data.labels")
        assert bars == ["a", "b"]
        assert await w.page.locator("tr.winner td").first.inner_text() == "a"
        assert w.errors == []
