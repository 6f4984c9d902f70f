"""A virtual clock's advance when a service does not settle: the gateway asks again for a while (a replica
restarting), then answers 503 saying where the clock is and where it was going, so a retry with `to` ends
at the time meant (a retry of `seconds` would go past it once the walk had moved the clock part way)."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI

from gateway.routes import admin
from nurture.service import Running

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": "Bearer test-key"}


async def test_an_advance_a_service_cannot_settle_says_where_the_clock_is_and_where_it_was_going(
        api: tuple[httpx.AsyncClient, FastAPI, Running], monkeypatch: pytest.MonkeyPatch) -> None:
    client, _app, _scoring = api
    monkeypatch.setattr(admin, "SETTLE_RETRY_S", 0.5)  # the other services are closed ports: not coming back
    before = datetime.fromisoformat((await client.get("/v1/admin/clock", headers=AUTH)).json()["now"])
    r = await client.post("/v1/admin/clock/advance", json={"seconds": 3600}, headers=AUTH)
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "unavailable" and r.headers["retry-after"] == "1"
    assert datetime.fromisoformat(error["details"]["now"]) == before  # nothing settled: the clock did not move
    target = error["details"]["target"]
    assert datetime.fromisoformat(target) == before + timedelta(hours=1)
    assert f'{{"to": "{target}"}}' in error["message"]
