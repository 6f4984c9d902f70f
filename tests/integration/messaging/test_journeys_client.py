"""journeys' messaging client against the real messaging service: sends issued together by concurrent
lead tasks go as one SendBatch, a lone send as a plain Send, and each caller gets its own outcome."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import grpc
import pytest

from nurture.api.messaging.v1 import messaging_pb2
from services.journeys.clients import Clients
from services.journeys.domain.state import Effect, SendPayload
from services.messaging import server as messaging_server
from tests.integration.messaging.conftest import Mesh
from tests.integration.messaging.harness import make_lead

pytestmark = pytest.mark.anyio


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """RPCs the real servicer answered, by method (counted on top of the real implementation)."""
    seen: Counter[str] = Counter()

    class Counting(messaging_server.MessagingServicer):
        async def Send(self, request: Any, context: grpc.aio.ServicerContext) -> messaging_pb2.SendReply:
            seen["Send"] += 1
            return await super().Send(request, context)

        async def SendBatch(self, request: Any, context: grpc.aio.ServicerContext) -> messaging_pb2.SendBatchReply:
            seen["SendBatch"] += 1
            seen["SendBatch items"] += len(request.items)
            return await super().SendBatch(request, context)

    monkeypatch.setattr(messaging_server, "MessagingServicer", Counting)
    return seen


def effect(lead_id: str, step: str, channel: str = "email") -> Effect:
    return Effect(kind="send", ekey="family", step=step, dedupe_key=f"{lead_id}:family:1:{step}:1.1",
                  occurrence="1.1", side=False,
                  payload=SendPayload(journey="family", version=1, step=step, channel=channel,
                                      template=f"family.{step}", category="nurture", context={}))


async def test_concurrent_sends_go_as_one_batch(calls: Counter[str], mesh: Mesh) -> None:
    clients = Clients(mesh.settings.with_overrides(messaging_addr=mesh.running.address))
    try:
        for i in range(7):
            mesh.scoring.add(make_lead(f"j{i}"))
        effects = [effect(f"j{i}", "email_01") for i in range(5)] + [effect("j5", "email_01", channel="fax")]
        results = await asyncio.gather(*(clients.perform(e.dedupe_key.split(":")[0], e) for e in effects))
        assert calls == {"SendBatch": 1, "SendBatch items": 6}
        assert [s for s, _, _ in results] == ["scheduled"] * 5 + ["failed"]
        assert results[5][2].startswith("INVALID_ARGUMENT: channel must be one of")
        assert len({mid for _, mid, _ in results[:5]}) == 5
        # Replayed after a crash: the same keys answer duplicate with the same ids.
        again = await asyncio.gather(*(clients.perform(e.dedupe_key.split(":")[0], e) for e in effects[:5]))
        assert [(s, mid) for s, mid, _ in again] == [("duplicate", mid) for _, mid, _ in results[:5]]
        # A lone send is a plain Send (to another lead: j0's next nurture email would wait the gap).
        alone = await clients.perform("j6", effect("j6", "email_02"))
        assert alone[0] == "scheduled" and calls["Send"] == 1 and calls["SendBatch"] == 2
        await mesh.settle()
        assert len(mesh.sink.messages()) == 6
    finally:
        await clients.close()
