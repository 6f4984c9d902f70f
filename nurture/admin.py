"""The `nurture.api.common.v1.Admin` service every service serves, built from three callables."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

import grpc

from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.errors import abort, invalid_fields
from nurture.rpcguard import guard_requests

SettleFn = Callable[[], Awaitable[tuple[int, datetime | None]]]
TimelineFn = Callable[[str, int], Awaitable[list[common_pb2.TimelineItem]]]
EraseFn = Callable[[str, str], Awaitable[int]]
StatsFn = Callable[[], Mapping[str, int]]


@guard_requests()
class AdminServicer(common_pb2_grpc.AdminServicer):
    """`settle()` returns (work done, next due time or None); `timeline(lead_id, limit)` returns items;
    `erase(lead_id, email_hash)` returns how many records were removed; `stats()` the process's
    counters (by default none)."""

    def __init__(self, *, settle: SettleFn, timeline: TimelineFn, erase: EraseFn,
                 stats: StatsFn | None = None) -> None:
        self._settle = settle
        self._timeline = timeline
        self._erase = erase
        self._stats = stats or dict

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


def timeline_item(
    *, at: datetime, kind: str, type: str, summary: str, details_json: str, id: str
) -> common_pb2.TimelineItem:
    item = common_pb2.TimelineItem(kind=kind, type=type, summary=summary, details_json=details_json, id=id)
    item.at.FromDatetime(at)
    return item
