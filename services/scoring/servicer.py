"""scoring's gRPC methods: proto in, application call, proto out; errors to status codes."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Collection
from datetime import UTC

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from nurture import errors, jsoncodec, limits, telemetry, times
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.busmessage import LeadSnapshot
from nurture.clock import Clock
from nurture.db import Database
from nurture.jsontypes import JsonMapping, JsonValue
from nurture.rpcguard import guard_requests, message_problems, problem_text
from services.scoring.app.core import ScoringCore
from services.scoring.app.ingest import PUBLISH_WAIT_S, IngestQueue
from services.scoring.app.model_versions import ModelVersions, UnknownVersion
from services.scoring.app.outbox import Outbox
from services.scoring.app.visitors import VisitorDoor
from services.scoring.domain.records import EmailTaken, EventIn, InvalidInput, LeadUpsert, NotFound, Stale
from services.scoring.domain.validation import validate_profile
from services.scoring.servicer_visitors import VisitorMethods

log = logging.getLogger(__name__)

# UpsertLeads: one transaction per call, so a call is bounded like a CRM batch.
MAX_UPSERTS = 1000
# What an ingest call keeps of its caller's deadline to send its answer in (`IngestEvents`).
DEADLINE_MARGIN_S = 0.3


def _ts(value: str | None) -> Timestamp:
    ts = Timestamp()
    when = times.parse_utc(value)
    if when is not None:
        ts.FromDatetime(when)
    return ts


def lead_proto(lead: LeadSnapshot) -> scoring_pb2.Lead:
    msg = scoring_pb2.Lead(
        id=lead.id, email=lead.email or "", first_name=lead.first_name or "",
        last_name=lead.last_name or "", segment=lead.segment or "", timezone=lead.timezone or "",
        locale=lead.locale or "", attributes_json=jsoncodec.dumps(lead.attributes),
        consent_json=jsoncodec.dumps(lead.consent), score=int(lead.score or 0), grade=lead.grade,
        lifecycle_stage=lead.lifecycle_stage,
        counters_json=jsoncodec.dumps({**lead.counters, "interests": lead.interests}),
        crm_id=lead.crm_id or "", version=int(lead.version or 0),
    )
    for name, value in (("created_at", lead.created_at), ("updated_at", lead.updated_at),
                        ("last_engaged_at", lead.last_engaged_at)):
        if value:
            getattr(msg, name).CopyFrom(_ts(value))
    return msg


def _profile_problems(fields: JsonValue, merge: bool, segments: Collection[str]) -> dict[str, str]:
    """The profile's own problems of input that already broke a limit (best effort: such input may
    be too deep for the profile checks to walk)."""
    if not isinstance(fields, dict):
        return {}
    try:
        return validate_profile(fields, partial=merge, segments=segments)
    except (RecursionError, ValueError, TypeError):
        return {}



def _upsert_of(request: scoring_pb2.UpsertLeadRequest, fields: JsonMapping) -> LeadUpsert:
    at = request.source_modified_at.ToDatetime(tzinfo=UTC) if request.HasField("source_modified_at") else None
    return LeadUpsert(request.id, fields, request.merge, request.source or "api", request.must_exist,
                      request.source_record, at)


def _publish_wait(context: grpc.aio.ServicerContext) -> float:
    """How long a write's answer may wait for its messages to be on the bus: until just before the
    caller's deadline (the caller then hears why, rather than a bare deadline); PUBLISH_WAIT_S for a
    caller without one."""
    left = context.time_remaining()
    return PUBLISH_WAIT_S if left is None else left - DEADLINE_MARGIN_S


@guard_requests(own={"IngestEvents": "events", "UpsertLeads": "leads", "UpsertLead": "fields_json"})
class ScoringServicer(VisitorMethods, scoring_pb2_grpc.ScoringServicer):
    def __init__(
        self, db: Database, store: ScoringCore, clock: Clock, outbox: Outbox, ingest: IngestQueue,
        versions: ModelVersions | None = None, visitors: VisitorDoor | None = None,
    ) -> None:
        self._visitor_door = visitors
        self._ingest = ingest
        self._db = db
        self._store = store
        self._clock = clock
        self._outbox = outbox
        self._versions = versions

    async def _upserted(self, items: list[LeadUpsert], context: grpc.aio.ServicerContext
                        ) -> list[tuple[LeadSnapshot, bool] | InvalidInput | NotFound | EmailTaken | Stale]:
        """Upserts in one transaction, answered once their messages are on the bus, as an ingest is
        (published from memory: `Outbox.write`): the lead's next event, whichever replica takes it,
        then comes after them. Not in time (Redis away): `Unconfirmed`; the write is stored, and
        sending it again is safe (an upsert of the same fields changes nothing more, and is answered
        once what the first one wrote is on the bus)."""
        done, announced = await self._outbox.write(
            functools.partial(self._store.upsert_leads, items, self._clock.now()), _publish_wait(context))
        if not announced:
            raise errors.Unconfirmed("the change is stored but could not be announced to the other services in "
                                     "time; sending it again is safe", details={"stored": True})
        return done

    async def UpsertLead(
        self, request: scoring_pb2.UpsertLeadRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.UpsertLeadReply:
        try:
            fields = limits.parse_json(request.fields_json or "{}", field="fields_json", check=False)
        except limits.InputError as exc:
            raise errors.invalid_fields(exc.problems) from exc
        problems = limits.problems_in(fields)
        if problems:  # listed with the profile's own problems, so one answer names every one
            raise errors.invalid_fields({**_profile_problems(fields, request.merge, self._store.model.segment_names),
                                         **problems})
        if not isinstance(fields, dict):
            raise errors.invalid_fields({"fields_json": "must be a JSON object"})
        [out] = await self._upserted([_upsert_of(request, fields)], context)
        if isinstance(out, InvalidInput):
            raise errors.invalid_fields(out.problems) from out
        if isinstance(out, NotFound):
            raise errors.NotFound(f"no lead {request.id}") from None
        if isinstance(out, EmailTaken):
            # Not the other lead's id: a 409 must not tell who else is on file (docs/INPUT-LIMITS.md).
            raise errors.Conflict(f"{out}; update that lead, or send no id to match it by email",
                                  details={"field": "email"}) from out
        if isinstance(out, Stale):
            return scoring_pb2.UpsertLeadReply(lead=lead_proto(out.lead), stale=True)
        lead, created = out
        return scoring_pb2.UpsertLeadReply(lead=lead_proto(lead), created=created)

    async def UpsertLeads(
        self, request: scoring_pb2.UpsertLeadsRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.UpsertLeadsReply:
        if len(request.leads) > MAX_UPSERTS:
            raise errors.InvalidArgument(f"at most {MAX_UPSERTS} leads per call")
        results: list[scoring_pb2.UpsertLeadResult | None] = [None] * len(request.leads)
        todo: list[tuple[int, LeadUpsert]] = []
        for i, r in enumerate(request.leads):
            try:
                problems = message_problems(r, skip="fields_json")
                if problems:
                    raise limits.InputError(problems)
                fields = limits.parse_json(r.fields_json or "{}", field="fields_json")
            except limits.InputError as exc:
                fields, problem = None, problem_text(exc.problems)
            else:
                problem = "" if isinstance(fields, dict) else "fields_json must be a JSON object"
            if problem:
                results[i] = scoring_pb2.UpsertLeadResult(error_code="invalid", error_message=problem)
            else:
                todo.append((i, _upsert_of(r, fields)))
        done = await self._upserted([item for _, item in todo], context)
        for (i, _), out in zip(todo, done, strict=True):
            if isinstance(out, InvalidInput):
                results[i] = scoring_pb2.UpsertLeadResult(
                    error_code="invalid", error_message="; ".join(f"{k} {v}" for k, v in out.problems.items()))
            elif isinstance(out, NotFound):
                results[i] = scoring_pb2.UpsertLeadResult(error_code="not_found",
                                                          error_message=f"no lead {request.leads[i].id}")
            elif isinstance(out, EmailTaken):
                results[i] = scoring_pb2.UpsertLeadResult(error_code="email_taken", error_message=str(out))
            elif isinstance(out, Stale):
                results[i] = scoring_pb2.UpsertLeadResult(lead=lead_proto(out.lead), stale=True)
            else:
                results[i] = scoring_pb2.UpsertLeadResult(lead=lead_proto(out[0]), created=out[1])
        return scoring_pb2.UpsertLeadsReply(results=[r for r in results if r is not None])

    async def GetLead(self, request: scoring_pb2.GetLeadRequest, context: grpc.aio.ServicerContext) -> scoring_pb2.Lead:
        found = await self._db.run(self._store.get_leads, [request.id], self._clock.now())
        if not found:
            raise errors.NotFound(f"no lead {request.id}")
        return lead_proto(found[0])

    async def GetLeads(
        self, request: scoring_pb2.GetLeadsRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.GetLeadsReply:
        found = await self._db.run(self._store.get_leads, list(request.ids), self._clock.now())
        return scoring_pb2.GetLeadsReply(leads=[lead_proto(lead) for lead in found])

    async def ListLeads(
        self, request: scoring_pb2.ListLeadsRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.ListLeadsReply:
        limit = request.limit if 0 < request.limit <= 1000 else 100
        page, cursor = await self._db.run(
            self._store.list_leads, segment=request.segment,
            min_score=request.min_score if request.has_min_score else None, stage=request.stage,
            email=request.email, q=request.q, cursor=request.cursor, limit=limit, now=self._clock.now())
        return scoring_pb2.ListLeadsReply(leads=[lead_proto(lead) for lead in page], next_cursor=cursor)

    async def EraseLead(
        self, request: scoring_pb2.EraseRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.EraseReply:
        erased, hashed = await self._db.run(self._store.erase_lead, request.id, self._clock.now())
        if not erased:
            raise errors.NotFound(f"no lead {request.id}")
        self._outbox.sweep_soon()
        return scoring_pb2.EraseReply(erased=True, email_hash=hashed)

    async def IngestEvents(
        self, request: scoring_pb2.IngestRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.IngestReply:
        batch: list[EventIn] = []
        refused: dict[int, str] = {}  # index → why: refused alone, the others are taken
        for i, ev in enumerate(request.events):
            try:
                problems = message_problems(ev, skip="properties_json")
                if problems:
                    raise limits.InputError(problems)
                props = limits.parse_json(ev.properties_json or "{}", field="properties")
            except limits.InputError as exc:
                refused[i] = problem_text(exc.problems)
                continue
            batch.append(EventIn(
                lead_id=ev.lead_id, type=ev.type, properties=props if isinstance(props, dict) else None,  # type: ignore[arg-type]
                occurred_at=ev.occurred_at.ToDatetime(tzinfo=UTC) if ev.HasField("occurred_at") else None,
                idempotency_key=ev.idempotency_key or None, source=ev.source or "api",
                trace=ev.traceparent or None))
        # Answered once the events are on the bus, or, near the caller's deadline, with Unconfirmed.
        taken = iter(await self._ingest.submit(batch, _publish_wait(context)) if batch else [])
        replies = []
        for i in range(len(request.events)):
            if i in refused:
                replies.append(scoring_pb2.EventResult(error_code="invalid", error_message=refused[i]))
                continue
            r = next(taken)
            replies.append(scoring_pb2.EventResult(event_id=r.event_id, duplicate=r.duplicate, error_code=r.error_code,
                                                   error_message=r.error_message))
        telemetry.tag_ids(lead_ids=(ev.lead_id for ev in request.events), event_ids=(r.event_id for r in replies))
        return scoring_pb2.IngestReply(results=replies)

    async def ScoreHistory(
        self, request: scoring_pb2.ScoreHistoryRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.ScoreHistoryReply:
        rows = await self._db.run(self._store.score_history, request.lead_id, request.limit or 500)
        changes = []
        for r in rows:
            change = scoring_pb2.ScoreChange(delta=r.delta, score_after=r.score_after, rule=r.rule, reason=r.reason,
                                             event_id=r.event_id or "")
            change.at.FromDatetime(r.at)
            changes.append(change)
        return scoring_pb2.ScoreHistoryReply(changes=changes)

    async def GetScoringModel(
        self, request: scoring_pb2.ScoringModelRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.ScoringModelReply:
        model = self._store.model  # the live one (publishing swaps it)
        versions = await self._db.run(self._versions.versions) if self._versions else []
        ever = await self._db.run(self._versions.segments_ever) if self._versions else []
        return scoring_pb2.ScoringModelReply(name=model.name, version=model.version,
                                             definition_json=json.dumps(model.definition, default=str),
                                             versions_json=json.dumps(versions),
                                             segments_ever=sorted({*ever, *model.segment_names}))

    async def PutScoringModel(
        self, request: scoring_pb2.PutScoringModelRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.PutScoringModelReply:
        assert self._versions is not None
        try:
            definition = json.loads(request.definition_json or "null")
        except json.JSONDecodeError as exc:
            return scoring_pb2.PutScoringModelReply(problems=[f"definition_json: not JSON ({exc.msg})"])
        version, problems = await self._db.run(self._versions.put_draft, definition, self._clock.now(),
                                               validate_only=request.validate_only)
        return scoring_pb2.PutScoringModelReply(version=version, problems=problems)

    async def PublishScoringModel(
        self, request: scoring_pb2.PublishScoringModelRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.PublishScoringModelReply:
        assert self._versions is not None
        if request.version < 1:
            raise errors.invalid_fields({"version": "must be a stored version (1 or more)"})
        try:
            model = await self._db.run(self._versions.model, request.version)
        except UnknownVersion:
            raise errors.NotFound(f"no scoring model version {request.version}") from None
        result = await self._db.run(self._versions.publish, request.version, dry_run=request.dry_run,
                                    now=self._clock.now(), announce=self._store.announce_model_change)
        if not request.dry_run:
            self._store.model = model
            self._outbox.sweep_soon()
            log.info("scoring model version %d published", request.version)
        return scoring_pb2.PublishScoringModelReply(
            version=result.version, dry_run=result.dry_run, leads=result.leads,
            grade_changes=result.grade_changes, stage_changes=result.stage_changes,
            changes_json=json.dumps(result.changes))


class EchoServicer(scoring_pb2_grpc.EchoServicer):
    """The raw unary RPC baseline the benchmarks compare against."""

    async def Echo(self, request: scoring_pb2.EchoRequest, context: grpc.aio.ServicerContext) -> scoring_pb2.EchoReply:
        return scoring_pb2.EchoReply(payload=request.payload)
