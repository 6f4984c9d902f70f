"""The operations page's queues: every service's timers (how many waiting, how many due now, the next
due time: Admin.Timers) and dead letters (bus messages a consumer gave up on, CRM pushes:
Admin.DeadLetters) with a retry button for editors and admins (Admin.RetryDeadLetter), each retry
recorded in the console's audit (gateway.console.audit) with its outcome."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway import roles
from gateway.console import audit
from gateway.console.guard import guarded, mesh_of, redirect
from gateway.console.session import Session
from gateway.deps import ApiError, Mesh
from nurture import redisconn
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.rpc import LONG_DEADLINE_S
from nurture.settings import SERVICES

router = APIRouter(prefix="/console", include_in_schema=False)
DEAD_SHOWN = 50
LETTER_ID = re.compile(r"[a-z_]{1,16}:[0-9-]{1,41}")


@dataclass(frozen=True)
class Queue:
    service: str
    name: str
    pending: int
    due_now: int
    next_due_at: datetime | None
    now: datetime | None


@dataclass(frozen=True)
class Letter:
    service: str
    id: str
    kind: str
    lead_id: str
    summary: str
    error: str
    at: datetime | None


@dataclass(frozen=True)
class Queues:
    timers: list[Queue]
    letters: list[Letter]
    dead_totals: dict[str, int]
    unavailable: list[str]  # services that did not answer
    audit: list[audit.AuditEntry] | None  # None: Redis did not answer
    can_retry: bool


def _admin(m: Mesh, service: str) -> common_pb2_grpc.AdminStub:
    return common_pb2_grpc.AdminStub(m.channel(service))


async def queues_view(m: Mesh, current: Session) -> Queues:
    async def one(service: str) -> tuple[common_pb2.TimersReply, common_pb2.DeadLettersReply] | None:
        try:
            due: common_pb2.TimersReply
            dead: common_pb2.DeadLettersReply
            due, dead = await asyncio.gather(
                _admin(m, service).Timers(common_pb2.TimersRequest(), timeout=m.timeout),
                _admin(m, service).DeadLetters(common_pb2.DeadLettersRequest(limit=DEAD_SHOWN), timeout=m.timeout))
        except grpc.aio.AioRpcError:
            return None
        return due, dead
    replies = await asyncio.gather(*(one(s) for s in SERVICES))
    timers: list[Queue] = []
    letters: list[Letter] = []
    totals: dict[str, int] = {}
    unavailable: list[str] = []
    for service, got in zip(SERVICES, replies, strict=True):
        if got is None:
            unavailable.append(service)
            continue
        t, d = got
        now = t.now.ToDatetime(tzinfo=UTC) if t.HasField("now") else None
        timers += [Queue(service, q.name, q.pending, q.due_now,
                         q.next_due_at.ToDatetime(tzinfo=UTC) if q.HasField("next_due_at") else None, now)
                   for q in t.queues]
        totals[service] = d.total
        letters += [Letter(service, x.id, x.kind, x.lead_id, x.summary, x.error,
                           x.at.ToDatetime(tzinfo=UTC) if x.HasField("at") else None) for x in d.items]
    try:
        client = redisconn.connect(m.settings)
        try:
            entries: list[audit.AuditEntry] | None = await audit.recent(client)
        finally:
            await client.aclose()
    except Exception as exc:  # redis errors: the page still shows the services' queues
        if not isinstance(exc, OSError) and "redis" not in type(exc).__module__:
            raise
        entries = None
    return Queues(timers=timers, letters=letters, dead_totals=totals, unavailable=unavailable, audit=entries,
                  can_retry=roles.allows(current.role, "editor"))


@router.post("/operations/dead-letters/retry")
async def retry(request: Request) -> Response:
    """Retry one dead letter on its service; the outcome goes to the audit, and the page shows it."""
    async def handler(_request: Request, current: Session) -> Response:
        fields = request.state.form
        service, letter = fields.get("service", ""), fields.get("id", "")
        problems = {}
        if service not in SERVICES:
            problems["service"] = f"must be one of {', '.join(SERVICES)}"
        if not LETTER_ID.fullmatch(letter):
            problems["id"] = "must be a dead letter's id as listed"
        if problems:
            raise ApiError(422, "invalid", "; ".join(f"{k} {v}" for k, v in problems.items()), {"fields": problems})
        m = mesh_of(request)
        actor = f"{current.role} {current.key_print}"
        try:
            reply = await _admin(m, service).RetryDeadLetter(
                common_pb2.RetryDeadLetterRequest(id=letter, actor=actor), timeout=LONG_DEADLINE_S)
            outcome, detail = ("delivered", "") if reply.delivered else ("failed", reply.error)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            outcome, detail = "not_found", "no such dead letter (already retried?)"
        client = redisconn.connect(m.settings)
        try:
            entry = await audit.record(client, role=current.role, key_print=current.key_print,
                                       action="retry_dead_letter", service=service, target=letter,
                                       outcome=outcome, detail=detail)
        finally:
            await client.aclose()
        if outcome == "not_found":
            raise ApiError(404, "not_found", f"{service} has no dead letter {letter}")
        return redirect(f"/console/operations?audit={entry}#audit")
    return await guarded(request, handler, needed="editor", form=True)
