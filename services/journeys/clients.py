"""Calls journeys makes to other services: messaging Send / ListTemplates, crm_sync RequestTask and
scoring UpsertLead. Each effect either succeeds, fails for good (recorded, the journey moves on) or is
`Unavailable` (the step is retried later with the same dedupe key, so it is never lost nor doubled).

"""

from __future__ import annotations

import json
from datetime import datetime

import grpc

from nurture.api.crm_sync.v1 import crm_sync_pb2, crm_sync_pb2_grpc
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.rpc import DEADLINE_S, channel
from nurture.settings import Settings
from services.journeys.model import Effect

TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.ABORTED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
             grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.CANCELLED}


class Unavailable(Exception):
    """The other service could not take the call now; retry later."""


class Clients:
    """One channel per service, opened lazily."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, service: str) -> grpc.aio.Channel:
        if service not in self._channels:
            self._channels[service] = channel(self._settings.address_of(service))
        return self._channels[service]

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    async def perform(self, lead_id: str, effect: Effect) -> tuple[str, str, str]:
        """Run an effect: (status, message_id, reason). Raises Unavailable for a retry later."""
        try:
            if effect.kind == "send":
                return await self._send(lead_id, effect)
            if effect.kind == "task":
                return await self._task(lead_id, effect)
            return await self._update(lead_id, effect)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in TRANSIENT:
                raise Unavailable(f"{exc.code().name}: {exc.details()}") from exc
            return "failed", "", f"{exc.code().name}: {exc.details()}"

    async def _send(self, lead_id: str, effect: Effect) -> tuple[str, str, str]:
        p = effect.payload
        stub = messaging_pb2_grpc.MessagingStub(self._channel("messaging"))
        req = messaging_pb2.SendRequest(
            dedupe_key=effect.dedupe_key, lead_id=lead_id, journey=p["journey"], journey_version=int(p["version"]),
            step=p["step"], channel=p["channel"], template=p["template"], category=p["category"],
            context_json=json.dumps(p["context"], default=str))
        reply = await stub.Send(req, timeout=DEADLINE_S)
        return reply.status or "sent", reply.message_id, reply.reason

    async def _task(self, lead_id: str, effect: Effect) -> tuple[str, str, str]:
        p = effect.payload
        req = crm_sync_pb2.TaskRequest(
            dedupe_key=effect.dedupe_key, lead_id=lead_id, kind=str(p["kind"]), title=str(p["title"]),
            priority=str(p["priority"]), details_json=json.dumps(p["details"], default=str))
        if isinstance(p.get("due_at"), datetime):
            req.due_at.FromDatetime(p["due_at"])
        stub = crm_sync_pb2_grpc.SalesOpsStub(self._channel("crm_sync"))
        reply = await stub.RequestTask(req, timeout=DEADLINE_S)
        return ("duplicate" if reply.duplicate else "done"), reply.task_id, reply.owner

    async def _update(self, lead_id: str, effect: Effect) -> tuple[str, str, str]:
        stub = scoring_pb2_grpc.ScoringStub(self._channel("scoring"))
        fields = {"attributes": effect.payload["set"]}
        await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(id=lead_id, fields_json=json.dumps(fields), merge=True,
                                                            source="journeys", must_exist=True), timeout=DEADLINE_S)
        return "done", "", ""

    async def templates(self) -> list[str] | None:
        """Template keys messaging knows, or None when messaging cannot say now."""
        stub = messaging_pb2_grpc.MessagingStub(self._channel("messaging"))
        try:
            reply = await stub.ListTemplates(messaging_pb2.ListTemplatesRequest(), timeout=2.0)
        except grpc.aio.AioRpcError:
            return None
        return list(reply.keys)
