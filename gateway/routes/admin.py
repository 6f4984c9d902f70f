"""Health, readiness and the virtual clock. Advancing the clock walks from due time to due time,
settling every service at each instant, so a 60-day advance runs each step at its own moment."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Required

import grpc
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gateway.convert import parse_time, require_object
from gateway.deps import ApiError, Mesh, json_body, mesh, require_key
from gateway.shapes import DocumentedRoute, TypedDict
from nurture import times
from nurture.addresses import listed
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.clock import VirtualClock
from nurture.jsontypes import JsonValue
from nurture.rpc import LONG_DEADLINE_S, health_status
from nurture.settings import SERVICES

router = APIRouter(tags=["admin"], route_class=DocumentedRoute)
MAX_ROUNDS = 100_000
SETTLE_RETRY_S = 15.0


class Health(TypedDict):
    status: str   # ok


class Clock(TypedDict):
    now: str


class Advanced(TypedDict):
    now: str
    instants: int   # the due times walked through on the way


class ServiceStats(TypedDict, total=False):
    counters: Required[dict[str, int] | None]   # null: the service did not answer
    status: str   # unavailable, when it did not


class Stats(TypedDict):
    services: dict[str, ServiceStats]


@router.get("/healthz", summary="The gateway process is up")
async def healthz() -> Health:
    return {"status": "ok"}


@router.get("/readyz", summary="Every service behind the gateway answers its gRPC health check")
async def readyz(m: Mesh = Depends(mesh)) -> JSONResponse:
    addresses = {s: m.settings.address_of(s) for s in SERVICES}
    statuses = await asyncio.gather(*(health_status(a) for a in addresses.values()))
    body = {"services": {s: {"address": addresses[s], "status": st} for s, st in zip(SERVICES, statuses, strict=True)}}
    ready = all(st == "SERVING" for st in statuses)
    return JSONResponse(body, status_code=200 if ready else 503, headers={} if ready else {"Retry-After": "1"})


def _clock(request: Request) -> VirtualClock:
    clock = request.app.state.clock
    if not isinstance(clock, VirtualClock):
        raise ApiError(404, "not_found", "the clock is real: start the mesh with --clock virtual")
    return clock


async def _settle(m: Mesh, service: str) -> common_pb2.SettleReply:
    """One Settle; a replica that is not answering (restarting after a crash: `nurture up` starts it again
    within seconds) is asked again for up to SETTLE_RETRY_S before the advance gives up."""
    give_up, pause = time.monotonic() + SETTLE_RETRY_S, 0.1
    while True:
        try:
            reply: common_pb2.SettleReply = await common_pb2_grpc.AdminStub(m.channel(service)).Settle(
                common_pb2.SettleRequest(), timeout=LONG_DEADLINE_S)
            return reply
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + pause > give_up:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 2.0)


async def settle_all(m: Mesh) -> datetime | None:
    """Settle every service until none has work left; the earliest next due time of any. A Settle call
    reaches one replica of a service (the channel balances round robin), so with a service's replicas
    listed the mesh is quiet only after as many rounds in a row without work as it has replicas."""
    quiet_needed = max(listed(m.settings.address_of(s)) for s in SERVICES)
    quiet = 0
    due: list[datetime] = []  # next due times the replicas reported in the quiet rounds so far
    for _ in range(MAX_ROUNDS):
        work = 0
        for service in SERVICES:  # in order: scoring publishes what the others consume
            reply = await _settle(m, service)
            work += reply.work_done
            if reply.has_next_due:
                due.append(reply.next_due_at.ToDatetime(tzinfo=UTC))
        quiet = quiet + 1 if work == 0 else 0
        if not quiet:
            due = []
        elif quiet >= quiet_needed:
            return min(due) if due else None
    raise ApiError(409, "no_quiescence", "services kept producing work; a rule loop?")


@router.get("/v1/admin/clock", dependencies=[Depends(require_key)], summary="The virtual clock's time")
async def get_clock(request: Request) -> Clock:
    return {"now": times.rfc3339(_clock(request).now())}


@router.post("/v1/admin/clock/advance", dependencies=[Depends(require_key)],
             summary="Move virtual time forward and process everything due up to then")
async def advance(request: Request, body: JsonValue = Depends(json_body), m: Mesh = Depends(mesh)) -> Advanced:
    body = require_object(body)
    clock = _clock(request)
    now = clock.now()
    if "to" in body:
        target = parse_time(body["to"], "to")
    else:
        seconds = body.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 400 * 86400:
            raise ApiError(422, "invalid", "seconds must be a number between 0 and 34560000",
                           {"fields": {"seconds": "0..34560000"}})
        target = now + timedelta(seconds=float(seconds))
    if target < now:
        raise ApiError(422, "invalid", "time only moves forward")
    async with request.app.state.clock_lock:
        steps = 0
        try:
            next_due = await settle_all(m)
            while next_due is not None and next_due <= target:
                # Work reported due but not done (e.g. a failing retry) must not stall the walk.
                next_due = max(next_due, clock.now() + timedelta(seconds=1))
                if next_due > target:
                    break
                clock.set(next_due)
                steps += 1
                next_due = await settle_all(m)
            clock.set(target)
            await settle_all(m)
        except grpc.aio.AioRpcError as exc:
            # The walk may have moved the clock part of the way: say where it is and where it was going,
            # so the caller retries with `to` (a retry of `seconds` would go past the time it meant).
            raise ApiError(503, "unavailable", f"a service did not settle ({exc.code().name}); the clock is at "
                           f"{times.rfc3339(clock.now())}: retry with {{\"to\": \"{times.rfc3339(target)}\"}}",
                           {"now": times.rfc3339(clock.now()), "target": times.rfc3339(target)},
                           headers={"Retry-After": "1"}) from exc
    return {"now": times.rfc3339(clock.now()), "instants": steps}


@router.get("/v1/admin/stats", dependencies=[Depends(require_key)],
            summary="Each service's operational counters (e.g. storage transactions retried after a deadlock)")
async def stats(m: Mesh = Depends(mesh)) -> Stats:
    async def one(service: str) -> dict[str, int] | None:
        try:
            reply = await common_pb2_grpc.AdminStub(m.channel(service)).Stats(common_pb2.StatsRequest(),
                                                                              timeout=m.timeout)
        except grpc.aio.AioRpcError:
            return None  # that service is down: its counters are unknown, the others still useful
        return dict(sorted(reply.counters.items()))

    counters = await asyncio.gather(*(one(s) for s in SERVICES))
    return {"services": {s: ({"counters": c} if c is not None else {"counters": None, "status": "unavailable"})
                         for s, c in zip(SERVICES, counters, strict=True)}}
