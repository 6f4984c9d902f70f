"""Tiny real gRPC servers implementing other services' contracts (messaging Send/SendBatch/ListTemplates,
crm_sync RequestTask) that record every call and dedupe like the contract says, plus helpers that
drive virtual time the way the gateway does.

The messaging fake answers what the real service can answer, per template (`Recorder.answers`):
`scheduled` (queued, possibly deferred by the send window or caps, with the reason), `sent`,
`suppressed` (no consent, suppression list), `failed` (unknown template), `invalid` (a SendBatch item
Send would refuse), or a gRPC error (UNAVAILABLE: retry later; INVALID_ARGUMENT: refused for good).
Without an answer it says `sent`. A key it has answered before gets `duplicate` with the first id."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.crm_sync.v1.crm_sync_pb2 import TaskReply, TaskRequest
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.bus import Publisher
from nurture.busmessage import BusMessage, LeadSnapshot
from nurture.clock import Clock, VirtualClock
from nurture.rpc import ServiceServer, start_server
from tests.conftest import MESH_TOKEN


@dataclass
class Recorder:
    sends: list[messaging_pb2.SendRequest] = field(default_factory=list)
    tasks: list[Any] = field(default_factory=list)
    delivered: dict[str, str] = field(default_factory=dict)  # dedupe key -> message id
    templates: list[str] | None = None
    # template -> (status, reason), or a grpc.StatusCode to fail the call with
    answers: dict[str, tuple[str, str] | grpc.StatusCode] = field(default_factory=dict)
    batches: int = 0
    # Called with each send request as it arrives (before the answer): a kill test's trigger.
    on_send: Callable[[messaging_pb2.SendRequest], None] | None = None
    withdrawals: list[messaging_pb2.WithdrawRequest] = field(default_factory=list)  # those answered
    withdraw_answer: grpc.StatusCode | None = None   # a code to fail Withdraw with (messaging away)

    def sent_keys(self) -> list[str]:
        return [r.dedupe_key for r in self.sends]


class FakeMessaging(messaging_pb2_grpc.MessagingServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def _answer(self, request: messaging_pb2.SendRequest) -> messaging_pb2.SendReply | grpc.StatusCode:
        self.rec.sends.append(request)
        if self.rec.on_send is not None:
            self.rec.on_send(request)
        if request.dedupe_key in self.rec.delivered:
            return messaging_pb2.SendReply(message_id=self.rec.delivered[request.dedupe_key], status="duplicate")
        answer = self.rec.answers.get(request.template, ("sent", ""))
        if isinstance(answer, grpc.StatusCode):
            return answer
        status, reason = answer
        if status == "invalid":
            return messaging_pb2.SendReply(status="invalid", reason=reason)
        mid = f"msg-{uuid.uuid4().hex[:10]}"
        self.rec.delivered[request.dedupe_key] = mid
        return messaging_pb2.SendReply(message_id=mid, status=status, reason=reason)

    async def Send(self, request: messaging_pb2.SendRequest, context: grpc.aio.ServicerContext) -> Any:
        reply = self._answer(request)
        if isinstance(reply, grpc.StatusCode):
            await context.abort(reply, f"fake messaging answers {reply.name}")
        if isinstance(reply, messaging_pb2.SendReply) and reply.status == "invalid":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reply.reason)
        return reply

    async def SendBatch(self, request: messaging_pb2.SendBatchRequest, context: grpc.aio.ServicerContext) -> Any:
        self.rec.batches += 1
        replies = [self._answer(item) for item in request.items]
        for reply in replies:
            if isinstance(reply, grpc.StatusCode):  # a call-level error fails the whole batch
                await context.abort(reply, f"fake messaging answers {reply.name}")
        return messaging_pb2.SendBatchReply(results=replies)

    async def Subscriptions(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return messaging_pb2.SubscriptionsReply()  # no address is suppressed here

    async def Withdraw(self, request: messaging_pb2.WithdrawRequest, context: grpc.aio.ServicerContext) -> Any:
        if self.rec.withdraw_answer is not None:
            await context.abort(self.rec.withdraw_answer, f"fake messaging answers {self.rec.withdraw_answer.name}")
        self.rec.withdrawals.append(request)
        return messaging_pb2.WithdrawReply(withdrawn=0)

    async def ListTemplates(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self.rec.templates is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no templates")
        return messaging_pb2.ListTemplatesReply(keys=self.rec.templates or [])


async def start_fakes(rec: Recorder, *, messaging_port: int = 0,
                      crm_port: int = 0) -> tuple[ServiceServer, ServiceServer]:
    def reg_messaging(server: grpc.aio.Server) -> Iterable[str]:
        messaging_pb2_grpc.add_MessagingServicer_to_server(FakeMessaging(rec), server)
        return [messaging_pb2.DESCRIPTOR.services_by_name["Messaging"].full_name]

    async def request_task(request: Any, context: grpc.aio.ServicerContext) -> Any:
        dup = any(t.dedupe_key == request.dedupe_key for t in rec.tasks)
        rec.tasks.append(request)
        return TaskReply(task_id=f"task-{request.dedupe_key}", owner="rep-1", duplicate=dup)

    def reg_crm(server: grpc.aio.Server) -> Iterable[str]:
        handler = grpc.method_handlers_generic_handler("nurture.api.crm_sync.v1.SalesOps", {
            "RequestTask": grpc.unary_unary_rpc_method_handler(
                request_task, request_deserializer=TaskRequest.FromString,
                response_serializer=lambda m: m.SerializeToString())})
        server.add_generic_rpc_handlers((handler,))
        return []

    messaging = await start_server(name="fake-messaging", port=messaging_port, register=reg_messaging,
                                   mesh_tokens=[MESH_TOKEN])
    crm = await start_server(name="fake-crm", port=crm_port, register=reg_crm, mesh_tokens=[MESH_TOKEN])
    return messaging, crm


def lead(lead_id: str, segment: str = "skilled_professional", **attributes: Any) -> dict[str, Any]:
    return {"id": lead_id, "email": f"{lead_id}@example.com", "segment": segment, "consent": {"email": True},
            "score": 10, "grade": "B", "lifecycle_stage": "lead", "attributes": attributes,
            "counters": {"opens_7d": 0, "downloads": 0, "interactions_24h": 0}, "interests": {}}


_ids = iter(range(1, 10**9))


async def publish(pub: Publisher, clock: Clock, lead_snapshot: dict[str, Any], etype: str,
                  **props: Any) -> str:
    mid = f"bus-{next(_ids)}"
    await pub.publish([BusMessage(id=mid, lead_id=lead_snapshot["id"], type=etype, properties=props,
                                  occurred_at=clock.now().isoformat(), lead=LeadSnapshot.from_dict(lead_snapshot))])
    return mid


async def settle(admin: common_pb2_grpc.AdminStub) -> common_pb2.SettleReply:
    reply: common_pb2.SettleReply = await admin.Settle(common_pb2.SettleRequest(), timeout=60)
    return reply


async def advance(admin: common_pb2_grpc.AdminStub, clock: VirtualClock, seconds: float) -> int:
    """Move virtual time forward from due time to due time, settling at each (as the gateway does)."""
    end = clock.now().timestamp() + seconds
    work = 0
    while True:
        reply = await settle(admin)
        work += reply.work_done
        if reply.work_done:
            continue
        nxt = reply.next_due_at.seconds + reply.next_due_at.nanos / 1e9
        if reply.has_next_due and nxt <= end and nxt > clock.now().timestamp():
            clock.set(datetime.fromtimestamp(nxt, UTC))
            continue
        break
    clock.set(datetime.fromtimestamp(end, UTC))
    work += (await settle(admin)).work_done
    return work


def timeline_summaries(reply: common_pb2.TimelineReply) -> list[str]:
    return [i.summary for i in reply.items]


def details(reply: common_pb2.TimelineReply) -> list[dict[str, Any]]:
    return [json.loads(i.details_json) for i in reply.items]
