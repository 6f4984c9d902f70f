"""crm_sync wiring: proto in, core call, proto out, errors to status codes; bus consumer, push loop,
Admin (Settle, Timeline, EraseLead)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import grpc

from nurture import errors, limits, redisconn
from nurture.admin import AdminServicer, timeline_item
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.crm_sync.v1 import crm_sync_pb2, crm_sync_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.bus import Consumer
from nurture.clock import make_clock
from nurture.db import open_database
from nurture.rpc import channel, start_server
from nurture.rpcguard import guard_requests, message_problems, problem_text
from nurture.service import Running
from nurture.settings import Settings
from services.crm_sync import domain
from services.crm_sync.connector import HubSpotConnector
from services.crm_sync.sync import (
    ContactIn,
    CrmSyncCore,
    InputError,
    JourneysLookup,
    ScoringUnavailable,
    UnknownContact,
)

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
MAX_CONTACTS = 1000


def _when(ts: Any, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if present else None


def _props(text: str, where: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = limits.parse_json(text, field=f"{where}.properties_json")
    except limits.InputError as exc:
        raise InputError(problem_text(exc.problems)) from exc
    if not isinstance(value, dict):
        raise InputError(f"{where}.properties_json must be a JSON object")
    return value


class CrmAuth:
    """Maps the bearer token of a call to the CRM it belongs to (settings.crm_tokens: name → token)."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = dict(tokens)

    async def crm_of(self, context: grpc.aio.ServicerContext) -> str:
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value.lower().startswith("bearer "):
                token = value[7:].strip()
            elif key == "x-crm-token" and isinstance(value, str):
                token = value.strip()
        for name, expected in self._tokens.items():
            # Compare every token in constant time so timing says nothing about which one was close.
            if token and hmac.compare_digest(token.encode(), expected.encode()):
                return name
        await errors.abort(context, errors.Unauthenticated(
            "a CRM token is required in metadata (authorization: Bearer <token>)"))


async def _fail(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    """Domain errors → the platform's errors (nurture.errors gives each its status and JSON message)."""
    if isinstance(exc, InputError):
        await errors.abort(context, errors.InvalidArgument(str(exc)))
    if isinstance(exc, UnknownContact):
        await errors.abort(context, errors.NotFound(str(exc)))
    if isinstance(exc, ScoringUnavailable):
        # Scoring's text may name internal addresses, and the caller is a CRM outside the mesh: logged only.
        log.warning("scoring unavailable: %s", str(exc)[:300])
        await errors.abort(context, errors.Unavailable("scoring unavailable, retry"))
    raise exc


@guard_requests(own={"UpsertContacts": "contacts"})
class CrmSyncServicer(crm_sync_pb2_grpc.CrmSyncServicer):
    def __init__(self, core: CrmSyncCore, auth: CrmAuth) -> None:
        self._core = core
        self._auth = auth

    async def UpsertContacts(
        self, request: crm_sync_pb2.UpsertContactsRequest, context: grpc.aio.ServicerContext
    ) -> crm_sync_pb2.UpsertContactsReply:
        crm = await self._auth.crm_of(context)
        if not request.contacts:
            await errors.abort(context, errors.invalid_fields({"contacts": "is empty"}))
        if len(request.contacts) > MAX_CONTACTS:
            await errors.abort(context, errors.InvalidArgument(f"at most {MAX_CONTACTS} contacts per call"))
        now = self._core.clock.now()
        good: list[tuple[int, ContactIn]] = []
        results: list[dict[str, Any] | None] = [None] * len(request.contacts)
        for i, c in enumerate(request.contacts):
            try:
                if not c.crm_id and not c.email:
                    raise InputError(f"contacts[{i}]: crm_id or email is required")
                problems = message_problems(c, prefix=f"contacts[{i}].")  # each contact alone
                if problems:
                    raise InputError(problem_text(problems))
                props = _props(c.properties_json, f"contacts[{i}]")
                good.append((i, ContactIn(crm_id=c.crm_id, email=c.email.strip(), first_name=c.first_name,
                                          last_name=c.last_name, properties=props,
                                          modified_at=_when(c.modified_at, c.HasField("modified_at")) or now,
                                          lead_id=c.lead_id)))
            except InputError as exc:
                results[i] = {"crm_id": c.crm_id, "lead_id": "", "status": "error", "error_code": "invalid",
                              "error_message": str(exc), "conflicts": []}
        done = await self._core.upsert_contacts(crm, [c for _, c in good])
        for (i, _), res in zip(good, done, strict=True):
            results[i] = res
        return crm_sync_pb2.UpsertContactsReply(results=[crm_sync_pb2.ContactResult(**r) for r in results if r])

    async def RecordActivity(
        self, request: crm_sync_pb2.RecordActivityRequest, context: grpc.aio.ServicerContext
    ) -> crm_sync_pb2.InboundReply:
        crm = await self._auth.crm_of(context)
        a = request.activity
        try:
            reply = await self._core.record_activity(crm, {
                "activity_id": a.activity_id, "crm_id": a.crm_id, "lead_id": a.lead_id, "kind": a.kind,
                "outcome": a.outcome, "body": a.body, "reason": a.reason,
                "occurred_at": _when(a.occurred_at, a.HasField("occurred_at")),
                "modified_at": _when(a.modified_at, a.HasField("modified_at")),
                "properties": _props(a.properties_json, "activity")})
        except (InputError, UnknownContact, ScoringUnavailable) as exc:
            await _fail(context, exc)
        return crm_sync_pb2.InboundReply(**reply)

    async def ReportDeal(
        self, request: crm_sync_pb2.ReportDealRequest, context: grpc.aio.ServicerContext
    ) -> crm_sync_pb2.InboundReply:
        crm = await self._auth.crm_of(context)
        d = request.deal
        try:
            reply = await self._core.report_deal(crm, {
                "deal_id": d.deal_id, "crm_id": d.crm_id, "lead_id": d.lead_id, "stage": d.stage, "amount": d.amount,
                "currency": d.currency, "reason": d.reason,
                "modified_at": _when(d.modified_at, d.HasField("modified_at")),
                "properties": _props(d.properties_json, "deal")})
        except (InputError, UnknownContact, ScoringUnavailable) as exc:
            await _fail(context, exc)
        return crm_sync_pb2.InboundReply(**reply)

    async def WatchChanges(
        self, request: crm_sync_pb2.WatchChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[crm_sync_pb2.LeadChange]:
        await self._auth.crm_of(context)
        cursor = request.cursor.strip()
        if cursor and not cursor.isdigit():
            await errors.abort(context, errors.invalid_fields({"cursor": "must be one a previous change returned"}))
        async for row in self._core.watch(int(cursor or 0), request.follow, max(0, request.limit)):
            data = row["data"]
            change = crm_sync_pb2.LeadChange(
                cursor=str(row["seq"]), lead_id=row["lead_id"], crm_id=row["crm_id"] or "", changed=row["changed"],
                score=int(data.get("score", 0)), grade=str(data.get("grade", "")),
                lifecycle_stage=str(data.get("lifecycle_stage", "")), segment=str(data.get("segment", "")),
                journeys_json=json.dumps(data.get("journeys", [])),
                engagement_json=json.dumps(data.get("engagement", {})))
            change.at.FromDatetime(row["at"])
            yield change


@guard_requests()
class SalesOpsServicer(crm_sync_pb2_grpc.SalesOpsServicer):
    def __init__(self, core: CrmSyncCore) -> None:
        self._core = core

    async def RequestTask(
        self, request: crm_sync_pb2.TaskRequest, context: grpc.aio.ServicerContext
    ) -> crm_sync_pb2.TaskReply:
        try:
            details = _props(request.details_json, "task").copy() if request.details_json else {}
            task, duplicate = await self._core.request_task({
                "dedupe_key": request.dedupe_key, "lead_id": request.lead_id, "kind": request.kind,
                "title": request.title, "priority": request.priority or "normal",
                "due_at": _when(request.due_at, request.HasField("due_at")), "details": details,
                "source": "journeys"})
        except (InputError, UnknownContact, ScoringUnavailable) as exc:
            await _fail(context, exc)
        return crm_sync_pb2.TaskReply(task_id=task["id"], owner=task["owner"] or "", duplicate=duplicate)


class EchoServicer(scoring_pb2_grpc.EchoServicer):
    """The raw unary RPC baseline for bench/crm.py, served by this same process."""

    async def Echo(self, request: scoring_pb2.EchoRequest, context: grpc.aio.ServicerContext) -> scoring_pb2.EchoReply:
        return scoring_pb2.EchoReply(payload=request.payload)


async def serve(settings: Settings) -> Running:
    cfg = domain.load_config()
    db = open_database(settings, service="crm_sync", migrations_dir=MIGRATIONS)
    redis = redisconn.connect(settings)
    clock = make_clock(settings.clock, settings.redis_url)
    scoring_channel = channel(settings.address_of("scoring"), settings.mesh_token)
    journeys_channel = channel(settings.address_of("journeys"), settings.mesh_token)
    connector = HubSpotConnector(settings.crm_url)
    crm_name = next(iter(settings.crm_tokens), "crm")
    core = CrmSyncCore(db=db, clock=clock, cfg=cfg, connector=connector,
                       scoring=scoring_pb2_grpc.ScoringStub(scoring_channel),
                       journeys=JourneysLookup(journeys_channel), crm_name=crm_name,
                       virtual=settings.clock == "virtual")
    await core.recover()
    consumer = Consumer(redis, group="crm_sync", shards=settings.bus_shards, handler=core.handle_messages)
    settle_lock = asyncio.Lock()

    async def settle() -> tuple[int, datetime | None]:
        async with settle_lock:
            return await core.settle(consumer.drain)

    async def timeline(lead_id: str, limit: int) -> list[common_pb2.TimelineItem]:
        items = await core.timeline(lead_id, limit)
        return [timeline_item(at=i["at"], kind="crm", type=i["type"], summary=i["summary"],
                              details_json=json.dumps(i["details"], default=str), id=i["id"]) for i in items]

    async def erase(lead_id: str, _hash: str) -> int:
        return await core.erase(lead_id)

    auth = CrmAuth(settings.crm_tokens)

    def register(server: grpc.aio.Server) -> Iterable[str]:
        crm_sync_pb2_grpc.add_CrmSyncServicer_to_server(CrmSyncServicer(core, auth), server)
        crm_sync_pb2_grpc.add_SalesOpsServicer_to_server(SalesOpsServicer(core), server)
        scoring_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)
        common_pb2_grpc.add_AdminServicer_to_server(AdminServicer(settle=settle, timeline=timeline, erase=erase,
                              stats=lambda: db.counters),
                                                    server)
        return [crm_sync_pb2.DESCRIPTOR.services_by_name[n].full_name for n in ("CrmSync", "SalesOps")] + [
            scoring_pb2.DESCRIPTOR.services_by_name["Echo"].full_name,
            common_pb2.DESCRIPTOR.services_by_name["Admin"].full_name]

    handle = await start_server(name="crm_sync", port=settings.grpc_port, register=register,
                                mesh_tokens=settings.mesh_tokens,
                                # CRMs present their CRM token (CrmAuth, on every method), not the mesh key.
                                self_authenticated=[crm_sync_pb2.DESCRIPTOR.services_by_name["CrmSync"].full_name])
    tasks = [asyncio.create_task(core.writer.run(), name="crm_sync-writer")]
    if settings.clock != "virtual":
        # With a virtual clock only Admin.Settle consumes the bus and performs pushes (deterministic runs).
        tasks.append(asyncio.create_task(consumer.run(), name="crm_sync-bus"))
        tasks.append(asyncio.create_task(core.push_loop(), name="crm_sync-push"))

    async def close() -> None:
        await connector.close()
        await scoring_channel.close()
        await journeys_channel.close()
        await redis.aclose()
        core.close()
        db.close()

    return Running(server=handle, tasks=tasks, close=close)
