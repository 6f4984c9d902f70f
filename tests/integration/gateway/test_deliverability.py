"""GET /v1/deliverability, POST /v1/deliverability/resume and /events through the gateway, against a
real messaging service (with a scoring stub and an SMTP sink): the DKIM record, the bounce receiver's
address, rates fed by a provider's webhook, roles, and refusals of bad input."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.settings import SERVICES, Settings
from services.messaging.domain.dkim import generate_key
from services.messaging.smtp_sink import SmtpSink
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.messaging.harness import ScoringStub, make_lead, start_scoring_stub

pytestmark = pytest.mark.anyio
EDITOR, VIEWER = "editor-key-0123456789", "viewer-key-0123456789"


class Gw:
    def __init__(self, client: httpx.AsyncClient, scoring: ScoringStub, messaging_addr: str) -> None:
        self.client, self.scoring, self.messaging_addr = client, scoring, messaging_addr

    async def call(self, method: str, path: str, key: str = EDITOR, **kw: object) -> httpx.Response:
        return await self.client.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def gw(settings: Settings, tmp_path: Path) -> AsyncIterator[Gw]:
    key = tmp_path / "k.pem"
    generate_key(key)
    scoring, scoring_server = await start_scoring_stub()
    sink = SmtpSink(tmp_path / "mail").start()
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    cfg = settings.with_overrides(**addrs).with_overrides(
        smtp_url=sink.url, scoring_addr=f"127.0.0.1:{scoring_server.port}",
        dkim_keys={"borderbridge.example:k1": str(key)}, api_keys={EDITOR: "editor", VIEWER: "viewer"})
    messaging = await start_service("messaging", cfg)
    app = create_app(cfg.with_overrides(api_key="test-key", messaging_addr=messaging.address))
    for s in SERVICES:
        app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            yield Gw(client, scoring, messaging.address)
    finally:
        await messaging.stop(grace=0.2)
        await scoring_server.stop(0)
        sink.stop()


async def test_the_dkim_record_and_the_bounce_receiver_are_shown(gw: Gw) -> None:
    r = await gw.call("GET", "/v1/deliverability", key=VIEWER)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dkim"]["domain"] == "borderbridge.example" and body["dkim"]["selector"] == "k1"
    assert body["dkim"]["dns_txt"].startswith("v=DKIM1; k=rsa; p=")
    host, port = body["bounce_smtp"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert body["rates"] == [] and body["paused"] == [] and body["warmup"] == {"domains": []}


async def test_resume_needs_an_editor_and_a_provider(gw: Gw) -> None:
    viewer = await gw.call("POST", "/v1/deliverability/resume", key=VIEWER, json={"provider": "gmail"})
    assert viewer.status_code == 403
    bad = await gw.call("POST", "/v1/deliverability/resume", json={"provider": ""})
    assert bad.status_code == 422 and "provider" in bad.json()["error"]["details"]["fields"]
    # A provider deliverability.yaml does not name is never paused: resuming it is a 422, not a no-op
    # answered 200 (this run's find).
    unknown = await gw.call("POST", "/v1/deliverability/resume", json={"provider": "aol"})
    assert unknown.status_code == 422, unknown.text
    assert "gmail" in unknown.json()["error"]["details"]["fields"]["provider"]
    other = await gw.call("POST", "/v1/deliverability/resume", json={"provider": "other"})
    assert other.status_code == 200, other.text
    ok = await gw.call("POST", "/v1/deliverability/resume", json={"provider": "gmail"})
    assert ok.status_code == 200 and ok.json()["was_paused"] is False and ok.json()["by"].startswith("editor key ")


async def test_a_provider_webhook_feeds_the_same_path(gw: Gw) -> None:
    gw.scoring.add(make_lead("ana", email="ana@hotmail.com", timezone="UTC"))
    ch = mesh_channel(gw.messaging_addr)
    try:
        sent = await messaging_pb2_grpc.MessagingStub(ch).Send(messaging_pb2.SendRequest(
            dedupe_key="ana:1", lead_id="ana", journey="lead_magnet", journey_version=1, step="email_01",
            channel="email", template="lead_magnet.email_01", context_json="{}"), timeout=5)
        await common_pb2_grpc.AdminStub(ch).Settle(common_pb2.SettleRequest(), timeout=10)
        ses = {"notificationType": "Bounce",
               "bounce": {"bounceType": "Permanent",
                          "bouncedRecipients": [{"emailAddress": "ana@hotmail.com", "diagnosticCode": "550 5.1.1"}]},
               "mail": {"headers": [{"name": "X-Nurture-Message", "value": sent.message_id}]}}
        r = await gw.call("POST", "/v1/deliverability/events", json=ses)
        assert r.status_code == 200 and r.json() == {"applied": 1, "ignored": []}
        await common_pb2_grpc.AdminStub(ch).Settle(common_pb2.SettleRequest(), timeout=10)
    finally:
        await ch.close()
    rates = (await gw.call("GET", "/v1/deliverability")).json()["rates"]
    assert [(x["provider"], x["sent"], x["bounced_hard"], x["hard_bounce_rate"]) for x in rates] == [
        ("microsoft", 1, 1, 1.0)]
    assert [json.loads(e.properties_json)["source"] for e in gw.scoring.events
            if e.type == "email_hard_bounced"] == ["webhook:ses"]
    # SendGrid-like: an unknown message is reported back, not applied; a bad shape is a 422.
    r = await gw.call("POST", "/v1/deliverability/events",
                      json=[{"event": "spamreport", "email": "x@y.com", "nurture_message_id": "m-nope"},
                            {"event": "open", "email": "x@y.com"}])
    assert r.status_code == 200 and r.json()["applied"] == 0 and "m-nope" in r.json()["ignored"][0]
    assert (await gw.call("POST", "/v1/deliverability/events", json={"what": 1})).status_code == 422
    bad = await gw.call("POST", "/v1/deliverability/events", json={"events": [{"kind": "exploded", "message_id": "m"}]})
    assert bad.status_code == 200
    assert bad.json()["ignored"] == ["0: kind must be one of complaint, delivered, hard_bounce, soft_bounce"]


@pytest.mark.parametrize("body", [
    [], {}, [1, "x", None], {"events": "x"}, {"events": [1, None, {"kind": 5}]},
    {"notificationType": "Bounce", "bounce": "x", "mail": [1]},
    {"notificationType": "Bounce", "bounce": {"bouncedRecipients": "x"}, "mail": {"headers": {"a": 1}}},
    {"notificationType": "Complaint", "complaint": [], "mail": {"headers": [{"name": 5}, "x"]}},
    [{"event": "bounce", "status": 4, "email": ["a"]}, {"event": 3}],
    {"events": [{"kind": "complaint", "message_id": "m" * 5000, "recipient": "x" * 5000}]},
])
async def test_odd_webhook_bodies_are_answered_not_crashed_on(gw: Gw, body: object) -> None:
    r = await gw.call("POST", "/v1/deliverability/events", json=body)
    assert r.status_code in (200, 422), r.text
    assert "error" in r.json() or "applied" in r.json()
