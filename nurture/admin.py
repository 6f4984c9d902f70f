"""The `nurture.api.common.v1.Admin` service every service serves, built from three callables."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import grpc

from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.errors import NotFound, abort, invalid_fields
from nurture.rpcguard import guard_requests

SettleFn = Callable[[], Awaitable[tuple[int, datetime | None]]]
TimelineFn = Callable[[str, int], Awaitable[list[common_pb2.TimelineItem]]]
EraseFn = Callable[[str, str], Awaitable[int]]
StatsFn = Callable[[], Mapping[str, int]]


@dataclass(frozen=True)
class TimerQueue:
    """One queue of work scheduled for later (common.proto TimerQueue)."""

    name: str
    pending: int
    due_now: int
    next_due_at: datetime | None


@dataclass(frozen=True)
class Timers:
    now: datetime
    queues: Sequence[TimerQueue]


TimersFn = Callable[[], Awaitable[Timers]]


@dataclass(frozen=True)
class DeadLetter:
    """Work a service gave up on (common.proto DeadLetter); `id` is what `retry` takes."""

    id: str
    kind: str
    lead_id: str
    summary: str
    error: str
    at: datetime | None


@dataclass(frozen=True)
class Retried:
    delivered: bool
    error: str = ""


class DeadLetters(Protocol):
    """A service's dead letters: listed newest first (and how many in all), and one tried again."""

    async def list(self, limit: int) -> tuple[list[DeadLetter], int]: ...

    async def retry(self, letter_id: str, actor: str) -> Retried | None:
        """None: no dead letter of that id here."""
        ...


class NoDeadLetters:
    async def list(self, limit: int) -> tuple[list[DeadLetter], int]:
        return [], 0

    async def retry(self, letter_id: str, actor: str) -> Retried | None:
        return None


class CombinedDeadLetters:
    """Several kinds of dead letters of one service (crm_sync: its bus group's and its CRM pushes),
    told apart by their id's prefix."""

    def __init__(self, *parts: tuple[str, DeadLetters]) -> None:
        self._parts = parts

    async def list(self, limit: int) -> tuple[list[DeadLetter], int]:
        items: list[DeadLetter] = []
        total = 0
        for _, part in self._parts:
            got, n = await part.list(limit)
            items += got
            total += n
        items.sort(key=lambda d: d.at.timestamp() if d.at else 0.0, reverse=True)
        return items[:limit], total

    async def retry(self, letter_id: str, actor: str) -> Retried | None:
        for prefix, part in self._parts:
            if letter_id.startswith(prefix + ":"):
                return await part.retry(letter_id, actor)
        return None


@guard_requests()
class AdminServicer(common_pb2_grpc.AdminServicer):
    """`settle()` returns (work done, next due time or None); `timeline(lead_id, limit)` returns items;
    `erase(lead_id, email_hash)` returns how many records were removed; `stats()` the process's
    counters (by default none)."""

    def __init__(self, *, settle: SettleFn, timeline: TimelineFn, erase: EraseFn,
                 stats: StatsFn | None = None, timers: TimersFn | None = None,
                 dead_letters: DeadLetters | None = None) -> None:
        self._settle = settle
        self._timeline = timeline
        self._erase = erase
        self._stats = stats or dict
        self._timers = timers
        self._dead: DeadLetters = dead_letters or NoDeadLetters()

    async def Settle(
        self, request: common_pb2.SettleRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.SettleReply:
        done, next_due = await self._settle()
        reply = common_pb2.SettleReply(work_done=done, has_next_due=next_due is not None)
        if next_due is not None:
            reply.next_due_at.FromDatetime(next_due)
        return reply

    async def Timeline(
        self, request: common_pb2.TimelineRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.TimelineReply:
        if not request.lead_id:
            await abort(context, invalid_fields({"lead_id": "is required"}))
        items = await self._timeline(request.lead_id, request.limit or 1000)
        return common_pb2.TimelineReply(items=items)

    async def EraseLead(
        self, request: common_pb2.EraseLeadRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.EraseLeadReply:
        if not request.lead_id:
            await abort(context, invalid_fields({"lead_id": "is required"}))
        return common_pb2.EraseLeadReply(removed=await self._erase(request.lead_id, request.email_hash))

    async def Stats(self, request: common_pb2.StatsRequest, context: grpc.aio.ServicerContext
                    ) -> common_pb2.StatsReply:
        return common_pb2.StatsReply(counters={k: int(v) for k, v in self._stats().items()})


    async def Timers(self, request: common_pb2.TimersRequest, context: grpc.aio.ServicerContext
                     ) -> common_pb2.TimersReply:
        reply = common_pb2.TimersReply()
        if self._timers is None:
            return reply
        got = await self._timers()
        reply.now.FromDatetime(got.now)
        for q in got.queues:
            item = reply.queues.add(name=q.name, pending=q.pending, due_now=q.due_now)
            if q.next_due_at is not None:
                item.next_due_at.FromDatetime(q.next_due_at)
        return reply

    async def DeadLetters(self, request: common_pb2.DeadLettersRequest, context: grpc.aio.ServicerContext
                          ) -> common_pb2.DeadLettersReply:
        if not 0 <= request.limit <= 500:
            await abort(context, invalid_fields({"limit": "must be between 1 and 500"}))
        items, total = await self._dead.list(request.limit or 100)
        reply = common_pb2.DeadLettersReply(total=total)
        for d in items:
            item = reply.items.add(id=d.id, kind=d.kind, lead_id=d.lead_id, summary=d.summary, error=d.error)
            if d.at is not None:
                item.at.FromDatetime(d.at)
        return reply

    async def RetryDeadLetter(self, request: common_pb2.RetryDeadLetterRequest,
                              context: grpc.aio.ServicerContext) -> common_pb2.RetryDeadLetterReply:
        if not request.id:
            await abort(context, invalid_fields({"id": "is required"}))
        outcome = await self._dead.retry(request.id, request.actor)
        if outcome is None:
            await abort(context, NotFound(f"no dead letter {request.id!r}", code="dead_letter_not_found"))
        return common_pb2.RetryDeadLetterReply(delivered=outcome.delivered, error=outcome.error)


def timeline_item(
    *, at: datetime, kind: str, type: str, summary: str, details_json: str, id: str
) -> common_pb2.TimelineItem:
    item = common_pb2.TimelineItem(kind=kind, type=type, summary=summary, details_json=details_json, id=id)
    item.at.FromDatetime(at)
    return item
