"""Calls journeys makes to other services: messaging Send / Withdraw / ListTemplates, crm_sync RequestTask and
scoring UpsertLead. Each effect either succeeds, fails for good (recorded, the journey moves on) or is
`Unavailable` (the step is retried later with the same dedupe key, so it is never lost nor doubled).

Sends that the runner's concurrent lead tasks issue in the same turn of the event loop (a timer batch
drives its leads together) go to messaging as one SendBatch; a lone send stays a plain Send.
"""

from __future__ import annotations

import asyncio
import json

import grpc

from nurture.aio import resolve
from nurture.api.crm_sync.v1 import crm_sync_pb2, crm_sync_pb2_grpc
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.errors import TRANSIENT
from nurture.rpc import DEADLINE_S, channel
from nurture.settings import Settings
from services.journeys.domain.state import Effect, SendPayload, TaskPayload, UpdatePayload, Withdrawal


class Unavailable(Exception):
    """The other service could not take the call now; retry later."""


SEND_BATCH_MAX = 500      # below messaging's limit of 1000 items per SendBatch


class SendCoalescer:
    """Gathers the Sends queued during one turn of the event loop into SendBatch calls.

    Each caller still gets its own reply (or the call's error, which `perform` classifies as for a
    single Send). A messaging without SendBatch (UNIMPLEMENTED, e.g. during a rolling upgrade) is
    remembered and served with single Sends from then on."""

    def __init__(self, stub: messaging_pb2_grpc.MessagingStub) -> None:
        self._stub = stub
        self._queue: list[tuple[messaging_pb2.SendRequest, asyncio.Future[messaging_pb2.SendReply]]] = []
        self._scheduled = False
        self._batch_supported = True
        self._tasks: set[asyncio.Task[None]] = set()

    async def send(self, request: messaging_pb2.SendRequest) -> messaging_pb2.SendReply:
        if not self._batch_supported:
            return await self._stub.Send(request, timeout=DEADLINE_S)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[messaging_pb2.SendReply] = loop.create_future()
        self._queue.append((request, future))
        if not self._scheduled:
            # call_soon runs after every task already woken in this turn has queued its send.
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        queued, self._queue = self._queue, []
        for start in range(0, len(queued), SEND_BATCH_MAX):
            task = asyncio.create_task(self._call(queued[start:start + SEND_BATCH_MAX]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, items: list[tuple[messaging_pb2.SendRequest, asyncio.Future[messaging_pb2.SendReply]]]
                    ) -> None:
        try:
            if len(items) == 1 or not self._batch_supported:
                replies = list(await asyncio.gather(*(self._stub.Send(r, timeout=DEADLINE_S) for r, _ in items),
                                                    return_exceptions=True))
            else:
                try:
                    reply = await self._stub.SendBatch(messaging_pb2.SendBatchRequest(items=[r for r, _ in items]),
                                                       timeout=DEADLINE_S)
                    replies = list(reply.results)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                        raise
                    self._batch_supported = False
                    replies = list(await asyncio.gather(
                        *(self._stub.Send(r, timeout=DEADLINE_S) for r, _ in items), return_exceptions=True))
            if len(replies) != len(items):
                raise grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                           details=f"SendBatch answered {len(replies)} results for {len(items)}")
        except BaseException as exc:  # every caller sees the call's failure; none waits forever
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        resolve((future, result) for (_, future), result in zip(items, replies, strict=True))


class Clients:
    """One channel per service, opened lazily."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._sends: SendCoalescer | None = None

    def _channel(self, service: str) -> grpc.aio.Channel:
        if service not in self._channels:
            self._channels[service] = channel(self._settings.address_of(service), self._settings.mesh_token)
        return self._channels[service]

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        self._sends = None

    async def withdraw(self, lead_id: str, w: Withdrawal) -> int:
        """messaging Withdraw: how many waiting messages it withdrew. Raises Unavailable for a retry later."""
        stub = messaging_pb2_grpc.MessagingStub(self._channel("messaging"))
        try:
            reply = await stub.Withdraw(messaging_pb2.WithdrawRequest(
                lead_id=lead_id, journey=w.journey, journey_version=w.version,
                occurrence_prefix=w.occurrence_prefix, reason=w.reason),
                timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in TRANSIENT:
                raise Unavailable(f"{exc.code().name}: {exc.details()}") from exc
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return 0  # a messaging without Withdraw (a rolling upgrade): its send-time checks decide
            raise
        return int(reply.withdrawn)

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
        assert isinstance(p, SendPayload), effect.kind
        if self._sends is None:
            self._sends = SendCoalescer(messaging_pb2_grpc.MessagingStub(self._channel("messaging")))
        req = messaging_pb2.SendRequest(
            dedupe_key=effect.dedupe_key, lead_id=lead_id, journey=p.journey, journey_version=int(p.version),
            step=p.step, channel=p.channel, template=p.template, category=p.category,
            context_json=json.dumps(p.context, default=str), budget_exempt=p.budget_exempt)
        reply = await self._sends.send(req)
        if reply.status == "invalid":  # what a single Send refuses with INVALID_ARGUMENT: failed for good
            return "failed", "", f"INVALID_ARGUMENT: {reply.reason}"
        return reply.status or "sent", reply.message_id, reply.reason

    async def _task(self, lead_id: str, effect: Effect) -> tuple[str, str, str]:
        p = effect.payload
        assert isinstance(p, TaskPayload), effect.kind
        req = crm_sync_pb2.TaskRequest(
            dedupe_key=effect.dedupe_key, lead_id=lead_id, kind=str(p.kind), title=str(p.title),
            priority=str(p.priority), details_json=json.dumps(p.details, default=str))
        req.due_at.FromDatetime(p.due_at)
        stub = crm_sync_pb2_grpc.SalesOpsStub(self._channel("crm_sync"))
        reply = await stub.RequestTask(req, timeout=DEADLINE_S)
        return ("duplicate" if reply.duplicate else "done"), reply.task_id, reply.owner

    async def _update(self, lead_id: str, effect: Effect) -> tuple[str, str, str]:
        stub = scoring_pb2_grpc.ScoringStub(self._channel("scoring"))
        assert isinstance(effect.payload, UpdatePayload), effect.kind
        fields = {"attributes": effect.payload.set}
        await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(id=lead_id, fields_json=json.dumps(fields), merge=True,
                                                            source="journeys", must_exist=True), timeout=DEADLINE_S)
        return "done", "", ""

    async def templates(self) -> tuple[list[str], dict[str, int]] | None:
        """Template keys messaging sends (those with a published version) and the drafts-only ones (key ->
        latest version), or None when messaging cannot say now."""
        stub = messaging_pb2_grpc.MessagingStub(self._channel("messaging"))
        try:
            reply = await stub.ListTemplates(messaging_pb2.ListTemplatesRequest(), timeout=2.0)
        except grpc.aio.AioRpcError:
            return None
        live = set(reply.keys)
        drafts = {i.key: i.latest_version for i in reply.items if i.key not in live and not i.published_version}
        return list(reply.keys), drafts
