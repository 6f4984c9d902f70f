"""crm_sync's gRPC methods: the CRM's token checked, proto in, application call, proto out; errors to status codes."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, NoReturn

import grpc

from nurture import errors, limits, telemetry
from nurture.api.crm_sync.v1 import crm_sync_pb2, crm_sync_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.locks import LockBusy
from nurture.rpcguard import guard_requests, message_problems, problem_text
from services.crm_sync.app.activities import ActivityIn, DealIn, InboundResult
from services.crm_sync.app.base import InputError, ScoringUnavailable, UnknownContact
from services.crm_sync.app.contacts import ContactIn, ContactResult
from services.crm_sync.app.core import CrmSyncCore
from services.crm_sync.app.proposals import MessagingUnavailable
from services.crm_sync.app.tasks import TaskRequest
from services.crm_sync.storage import Proposal

log = logging.getLogger(__name__)
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
    if isinstance(exc, LockBusy):
        await errors.abort(context, errors.Unavailable(str(exc)))
    if isinstance(exc, MessagingUnavailable):
        log.warning("messaging unavailable: %s", str(exc)[:300])
        await errors.abort(context, errors.Unavailable("messaging unavailable, retry"))
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
        results: list[ContactResult | None] = [None] * len(request.contacts)
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
                results[i] = ContactResult(c.crm_id, error_code="invalid", error_message=str(exc))
        try:
            done = await self._core.upsert_contacts(crm, [c for _, c in good])
        except LockBusy as exc:  # another replica held a contact past the wait: the CRM retries the call
            await _fail(context, exc)
        telemetry.tag_ids(lead_ids=(r.lead_id for r in done))
        for (i, _), res in zip(good, done, strict=True):
            results[i] = res
        return crm_sync_pb2.UpsertContactsReply(results=[crm_sync_pb2.ContactResult(
            crm_id=r.crm_id, lead_id=r.lead_id, status=r.status, error_code=r.error_code, error_message=r.error_message,
            conflicts=list(r.conflicts)) for r in results if r])

    async def RecordActivity(
        self, request: crm_sync_pb2.RecordActivityRequest, context: grpc.aio.ServicerContext
    ) -> crm_sync_pb2.InboundReply:
        crm = await self._auth.crm_of(context)
        a = request.activity
        telemetry.tag_ids(lead_ids=(a.lead_id,))
        try:
            reply = await self._core.record_activity(crm, ActivityIn(
                activity_id=a.activity_id, crm_id=a.crm_id, lead_id=a.lead_id, kind=a.kind,
                outcome=a.outcome, body=a.body, reason=a.reason,
                occurred_at=_when(a.occurred_at, a.HasField("occurred_at")),
                modified_at=_when(a.modified_at, a.HasField("modified_at")),
                properties=_props(a.properties_json, "activity")))
        except (InputError, UnknownContact, ScoringUnavailable, LockBusy) as exc:
            await _fail(context, exc)
        return _inbound_reply(reply)

    async def ReportDeal(
        self, request: crm_sync_pb2.ReportDealRequest, context: grpc.aio.ServicerContext
    ) -> crm_sync_pb2.InboundReply:
        crm = await self._auth.crm_of(context)
        d = request.deal
        telemetry.tag_ids(lead_ids=(d.lead_id,))
        try:
            reply = await self._core.report_deal(crm, DealIn(
                deal_id=d.deal_id, crm_id=d.crm_id, lead_id=d.lead_id, stage=d.stage, amount=d.amount,
                currency=d.currency, reason=d.reason, modified_at=_when(d.modified_at, d.HasField("modified_at")),
                properties=_props(d.properties_json, "deal")))
        except (InputError, UnknownContact, ScoringUnavailable, LockBusy) as exc:
            await _fail(context, exc)
        return _inbound_reply(reply)

    async def WatchChanges(
        self, request: crm_sync_pb2.WatchChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[crm_sync_pb2.LeadChange]:
        await self._auth.crm_of(context)
        cursor = request.cursor.strip()
        # A change's cursor is its sequence number: ASCII digits up to the safe integers (str.isdigit took
        # "²", which int() refuses, and a 30-digit cursor overflowed SQL's integer: both answered UNKNOWN).
        if cursor and not (cursor.isascii() and cursor.isdigit() and int(cursor) <= limits.MAX_SAFE_INTEGER):
            await errors.abort(context, errors.invalid_fields({"cursor": "must be a change's cursor"}))
        if request.limit < 0:
            await errors.abort(context, errors.invalid_fields({"limit": "must be 0 (no limit) or more"}))
        async for row in self._core.watch(int(cursor or 0), request.follow, request.limit):
            data = row.data
            change = crm_sync_pb2.LeadChange(
                cursor=str(row.seq), lead_id=row.lead_id, crm_id=row.crm_id or "", changed=row.changed,
                score=int(data.get("score", 0)), grade=str(data.get("grade", "")),
                lifecycle_stage=str(data.get("lifecycle_stage", "")), segment=str(data.get("segment", "")),
                journeys_json=json.dumps(data.get("journeys", [])),
                engagement_json=json.dumps(data.get("engagement", {})))
            change.at.FromDatetime(row.at)
            yield change


@guard_requests()
class SalesOpsServicer(crm_sync_pb2_grpc.SalesOpsServicer):
    def __init__(self, core: CrmSyncCore) -> None:
        self._core = core

    async def RequestTask(
        self, request: crm_sync_pb2.TaskRequest, context: grpc.aio.ServicerContext
    ) -> crm_sync_pb2.TaskReply:
        telemetry.tag_ids(lead_ids=(request.lead_id,))
        try:
            details = _props(request.details_json, "task").copy() if request.details_json else {}
            task, duplicate = await self._core.request_task(TaskRequest(
                dedupe_key=request.dedupe_key, lead_id=request.lead_id, kind=request.kind,
                title=request.title, priority=request.priority or "normal",
                due_at=_when(request.due_at, request.HasField("due_at")), details=details, source="journeys"))
        except (InputError, UnknownContact, ScoringUnavailable) as exc:
            await _fail(context, exc)
        return crm_sync_pb2.TaskReply(task_id=task.id, owner=task.owner or "", duplicate=duplicate)


def _inbound_reply(r: InboundResult) -> crm_sync_pb2.InboundReply:
    return crm_sync_pb2.InboundReply(lead_id=r.lead_id, status=r.status, event_id=r.event_id)


def _proposal(p: Proposal, url: str, *, with_html: bool) -> crm_sync_pb2.Proposal:
    out = crm_sync_pb2.Proposal(
        id=p.id, lead_id=p.lead_id, deal_id=p.deal_id or "", plan=p.plan, total=p.total,
        currency=p.currency, url=url, status=p.status, message_id=p.message_id or "",
        task_id=p.task_id or "", html=p.html if with_html else "", pathways=p.pathways,
        lines=[crm_sync_pb2.ProposalLine(kind=ln.kind, key=ln.key, name=ln.name, price=ln.price,
                                         rule=ln.rule) for ln in p.lines])
    out.created_at.FromDatetime(p.created_at)
    out.valid_until.FromDatetime(p.valid_until)
    return out


_PROPOSAL_ERRORS = (InputError, UnknownContact, ScoringUnavailable, MessagingUnavailable)


@guard_requests()
class ProposalsServicer(crm_sync_pb2_grpc.ProposalsServicer):
    """Internal (mesh key): the gateway's proposal routes for sales and the prospect's signed link."""

    def __init__(self, core: CrmSyncCore) -> None:
        self._core = core

    async def GenerateProposal(
        self, request: crm_sync_pb2.ProposalRequest, context: grpc.aio.ServicerContext
    ) -> crm_sync_pb2.GenerateProposalReply:
        try:
            p, duplicate = await self._core.generate_proposal(
                request.lead_id, plan=request.plan, deal_id=request.deal_id, requested_by=request.requested_by)
        except _PROPOSAL_ERRORS as exc:
            await _fail(context, exc)
        return crm_sync_pb2.GenerateProposalReply(
            proposal=_proposal(p, self._core.proposal_url(p.id), with_html=False), duplicate=duplicate)

    async def ListProposals(
        self, request: crm_sync_pb2.ListProposalsRequest, context: grpc.aio.ServicerContext
    ) -> crm_sync_pb2.ListProposalsReply:
        if not request.lead_id:
            await errors.abort(context, errors.invalid_fields({"lead_id": "is required"}))
        found = await self._core.list_proposals(request.lead_id)
        return crm_sync_pb2.ListProposalsReply(
            proposals=[_proposal(p, self._core.proposal_url(p.id), with_html=False) for p in found])

    async def GetProposal(
        self, request: crm_sync_pb2.GetProposalRequest, context: grpc.aio.ServicerContext
    ) -> crm_sync_pb2.Proposal:
        try:
            p = await self._core.get_proposal(request.id, request.token)
        except _PROPOSAL_ERRORS as exc:
            await _fail(context, exc)
        return _proposal(p, self._core.proposal_url(p.id), with_html=True)

    async def SendProposal(
        self, request: crm_sync_pb2.SendProposalRequest, context: grpc.aio.ServicerContext
    ) -> crm_sync_pb2.SendProposalReply:
        try:
            message_id, status, reason = await self._core.send_proposal(request.id)
        except _PROPOSAL_ERRORS as exc:
            await _fail(context, exc)
        return crm_sync_pb2.SendProposalReply(message_id=message_id, status=status, reason=reason)


class EchoServicer(scoring_pb2_grpc.EchoServicer):
    """The raw unary RPC baseline for bench/crm.py, served by this same process."""

    async def Echo(self, request: scoring_pb2.EchoRequest, context: grpc.aio.ServicerContext) -> scoring_pb2.EchoReply:
        return scoring_pb2.EchoReply(payload=request.payload)
