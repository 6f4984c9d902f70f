"""The ads connector against the local ad platform (a real HTTP server in its own process): audience
changes reach the platform's custom audiences as hashed emails in batches, suppression removes the lead
everywhere, a failure is retried in order, and a wrong token is refused by the platform."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nurture.bus import Publisher
from nurture.busmessage import BusMessage
from nurture.redisconn import connect
from nurture.settings import Settings
from services.messaging.clients import email_hash
from tests.conftest import free_port
from tests.integration.messaging.conftest import running_mesh
from tests.integration.messaging.harness import make_lead

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[3]
TOKEN = "ads-test-token"


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services.messaging.ads_emulator", "--port", str(port),
                             "--data-dir", str(tmp_path / "ads")], cwd=ROOT,
                            env={**os.environ, "NURTURE_ADS_TOKEN": TOKEN})
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{url}/_emulator/stats", timeout=0.5)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


def members(url: str, audience: str) -> list[str]:
    return list(httpx.get(f"{url}/v1/customaudiences/{audience}",
                          headers={"Authorization": f"Bearer {TOKEN}"}).json()["members"])


async def test_audience_changes_and_suppression_reach_the_platform(settings: Settings, tmp_path: Path,
                                                                   platform: str) -> None:
    async with running_mesh(settings, tmp_path, ads_url=platform, ads_token=TOKEN) as mesh:
        for lead_id in ("a1", "a2", "a3"):
            mesh.scoring.add(make_lead(lead_id, email=f"{lead_id.upper()}@Example.com "))
            await mesh.send(lead_id, "retarget", channel="ads_audience", context={"audience": "family_ads"})
        await mesh.settle()
        stats = httpx.get(f"{platform}/_emulator/stats").json()
        assert stats["requests"] == 1 and stats["received"] == 3, "the three adds go as one batch"
        hashes = {lead_id: email_hash(f"{lead_id}@example.com") for lead_id in ("a1", "a2", "a3")}
        assert members(platform, "family_ads") == sorted(hashes.values())   # normalised, then hashed

        # a2 converts: suppressed from ads, removed from the platform's audience at once.
        redis = connect(mesh.settings)
        await Publisher(redis, mesh.settings.bus_shards).publish([BusMessage.from_dict(
            {"id": "won-a2", "lead_id": "a2", "type": "opportunity_won", "properties": {},
             "lead": make_lead("a2", email="a2@example.com"), "occurred_at": "2026-01-05T09:00:00Z"})])
        await redis.aclose()
        await mesh.settle()
        assert members(platform, "family_ads") == sorted([hashes["a1"], hashes["a3"]])
        # Another add for the suppressed lead is recorded but never sent to the platform.
        await mesh.send("a2", "retarget", channel="ads_audience", context={"audience": "family_ads"}, key="again")
        await mesh.settle()
        assert hashes["a2"] not in members(platform, "family_ads")

        # The platform fails once: the removal is retried (in order) and then applied.
        httpx.post(f"{platform}/_emulator/faults", json={"mode": "fail", "status": 503, "count": 1})
        await mesh.send("a3", "retarget", channel="ads_audience", key="remove-a3",
                        context={"audience": "family_ads", "action": "remove"})
        await mesh.settle()
        assert hashes["a3"] in members(platform, "family_ads")    # the failed call did not apply
        mesh.clock.advance(60)
        await mesh.settle()
        assert members(platform, "family_ads") == [hashes["a1"]]


async def test_a_wrong_token_is_dead_lettered_not_retried_forever(settings: Settings, tmp_path: Path,
                                                                  platform: str) -> None:
    async with running_mesh(settings, tmp_path, ads_url=platform, ads_token="wrong") as mesh:
        mesh.scoring.add(make_lead("b1"))
        await mesh.send("b1", "retarget", channel="ads_audience", context={"audience": "x"})
        await mesh.settle()
        assert members(platform, "x") == []
        from sqlalchemy import create_engine, text

        engine = create_engine(mesh.settings.database_url_for("messaging"))
        with engine.connect() as conn:
            status, error = conn.execute(text("SELECT status, last_error FROM messaging_ads_outbox")).one()
        engine.dispose()
        assert status == "dead" and error.startswith("401")
