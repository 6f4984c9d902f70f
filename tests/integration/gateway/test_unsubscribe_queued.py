"""An unsubscribe is never lost to messaging being away (nurture.unsubscribequeue): a one-click POST is
sent once by the mailbox provider, so the gateway queues what messaging could not take and answers the
person; messaging applies it when it is back, verifying its token (a forged one is dropped). Real scoring
and messaging, messaging started only after the POST."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.app import create_app
from nurture import redisconn, unsubscribequeue
from nurture.settings import SERVICES, Settings
from services.messaging import server as messaging_server
from services.messaging.domain.tokens import Signer, Token
from tests.conftest import free_port, mesh_channel, start_service

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": "Bearer test-key"}
ONE_CLICK = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_a_one_click_unsubscribe_while_messaging_is_away_is_applied_when_it_is_back(settings: Settings) -> None:
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    cfg = settings.with_overrides(**addrs)
    scoring = await start_service("scoring", cfg)
    cfg = cfg.with_overrides(scoring_addr=scoring.address)
    app = create_app(cfg.with_overrides(api_key="test-key"))
    for s in SERVICES:
        app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))
    redis = redisconn.connect(cfg)
    messaging = None
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            r = await client.post("/v1/leads", headers=AUTH, json={"id": "away-1", "email": "away-1@example.com",
                                                                   "consent": {"email": True}})
            assert r.status_code == 201, r.text
            token = Signer(cfg.secret).sign(Token("unsubscribe", "m-away-1", "away-1"))
            r = await client.post(f"/u/{token}", content="List-Unsubscribe=One-Click", headers=ONE_CLICK)
            assert r.status_code == 200 and "recorded" in r.text, r.text
            forged = await client.post("/u/not-a-token", content="List-Unsubscribe=One-Click", headers=ONE_CLICK)
            assert forged.status_code == 200  # messaging cannot tell yet: queued, and dropped when it can
            too_long = await client.post("/u/" + "x" * (unsubscribequeue.MAX_TOKEN_CHARS + 1), data={"scope": "all"})
            assert too_long.status_code == 400
            assert await redis.xlen(unsubscribequeue.STREAM) == 2

            # On the address the gateway was calling.
            messaging = await messaging_server.serve(
                cfg.with_overrides(grpc_port=int(cfg.address_of("messaging").rpartition(":")[2])))
            shown: dict = {}
            for _ in range(100):
                r = await client.get("/v1/leads/away-1", headers=AUTH)
                shown = r.json()
                if ((shown.get("subscriptions") or {}).get("email") or {}).get("nurture") is False:
                    break
                await asyncio.sleep(0.1)
            assert shown["subscriptions"]["email"] == {"nurture": False, "transactional": True}, shown
            assert shown["consent"]["email"] is False
            for _ in range(50):
                if await redis.xlen(unsubscribequeue.STREAM) == 0:
                    break
                await asyncio.sleep(0.1)
            assert await redis.xlen(unsubscribequeue.STREAM) == 0  # both taken off: applied, and dropped
            # With messaging back, the RPC answers at once again (and the same unsubscribe records once).
            r = await client.post(f"/u/{token}", content="List-Unsubscribe=One-Click", headers=ONE_CLICK)
            assert r.status_code == 200 and "You will no longer receive" in r.text
            assert await redis.xlen(unsubscribequeue.STREAM) == 0
    finally:
        await redis.aclose()
        for ch in app.state.mesh.channels.values():
            await ch.close()
        if messaging is not None:
            await messaging.stop(grace=0.2)
        await scoring.stop(grace=0.2)


async def test_with_messaging_and_redis_both_away_an_unsubscribe_is_a_503_to_retry(settings: Settings) -> None:
    """Nothing can take the request: it is refused with Retry-After (the sender tries again), never
    answered as recorded."""
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}  # nobody listens on any of them
    cfg = settings.with_overrides(**addrs, api_key="test-key")
    app = create_app(cfg)
    for s in SERVICES:
        app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))
    # Redis goes away after the start (the gateway's clock read it then): nobody listens there now.
    app.state.mesh.settings = cfg.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    token = Signer(cfg.secret).sign(Token("unsubscribe", "m-away-2", "away-2"))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            r = await client.post(f"/u/{token}", content="List-Unsubscribe=One-Click", headers=ONE_CLICK)
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        assert "recorded" not in r.text
    finally:
        for ch in app.state.mesh.channels.values():
            await ch.close()


async def test_a_full_queue_refuses_with_a_503_and_grows_no_further(settings: Settings,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Messaging away and the queue at its bound (nurture.unsubscribequeue.MAX_ENTRIES, made 2 here): the next
    request is refused with Retry-After, not answered as recorded, and Redis holds no more than the bound."""
    monkeypatch.setattr(unsubscribequeue, "MAX_ENTRIES", 2)
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}  # messaging listens nowhere
    cfg = settings.with_overrides(**addrs, api_key="test-key")
    app = create_app(cfg)
    for s in SERVICES:
        app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))
    redis = redisconn.connect(cfg)
    try:
        await redis.delete(unsubscribequeue.STREAM)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            answers, tokens = [], []
            for i in range(3):
                token = Signer(cfg.secret).sign(Token("unsubscribe", f"m-full-{i}", f"full-{i}"))
                tokens.append(token)
                answers.append(await client.post(f"/u/{token}", content="List-Unsubscribe=One-Click",
                                                 headers=ONE_CLICK))
        assert [r.status_code for r in answers] == [200, 200, 503], [r.text for r in answers]
        assert "recorded" in answers[0].text and "recorded" in answers[1].text
        assert answers[2].headers["retry-after"] == str(unsubscribequeue.RETRY_AFTER_S)
        assert "recorded" not in answers[2].text
        assert await redis.xlen(unsubscribequeue.STREAM) == 2
        queued = await redis.xrange(unsubscribequeue.STREAM)
        assert [(fields[b"k"].decode(), fields[b"o"]) for _, fields in queued] == [
            (tokens[0], b"one_click"), (tokens[1], b"one_click")]
    finally:
        await redis.delete(unsubscribequeue.STREAM)
        await redis.aclose()
        for ch in app.state.mesh.channels.values():
            await ch.close()
