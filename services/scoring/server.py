"""Scoring service wiring: gRPC in, storage/model calls, proto out; outbox publishing; inactivity sweep."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace
from opentelemetry.propagate import extract

from nurture import errors, jsoncodec, limits, redisconn, times
from nurture.admin import AdminServicer, timeline_item
from nurture.aio import wait_event
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.bus import Publisher
from nurture.clock import Clock, make_clock
from nurture.db import Database, DriverWrites, open_database
from nurture.rpc import start_server
from nurture.rpcguard import guard_requests, message_problems, problem_text
from nurture.service import Running
from nurture.settings import Settings
from nurture.telemetry import redis_span
from services.scoring.model import load_model
from services.scoring.model_versions import ModelVersions, UnknownVersion
from services.scoring.storage import (
    EmailTaken,
    EventIn,
    EventResult,
    InvalidInput,
    NotFound,
    OutboxRow,
    Store,
    validate_profile,
)

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
# UpsertLeads: one transaction per call, so a call is bounded like a CRM batch.
MAX_UPSERTS = 1000


def _ts(value: str | None) -> Timestamp:
    ts = Timestamp()
    when = times.parse_utc(value)
    if when is not None:
        ts.FromDatetime(when)
    return ts


def lead_proto(lead: dict[str, Any]) -> scoring_pb2.Lead:
    msg = scoring_pb2.Lead(
        id=lead["id"], email=lead["email"] or "", first_name=lead["first_name"] or "",
        last_name=lead["last_name"] or "", segment=lead["segment"] or "", timezone=lead["timezone"] or "",
        locale=lead["locale"] or "", attributes_json=jsoncodec.dumps(lead["attributes"]),
        consent_json=jsoncodec.dumps(lead["consent"]), score=int(lead["score"]), grade=lead["grade"],
        lifecycle_stage=lead["lifecycle_stage"],
        counters_json=jsoncodec.dumps({**lead["counters"], "interests": lead.get("interests", {})}),
        crm_id=lead["crm_id"] or "", version=int(lead["version"]),
    )
    for name in ("created_at", "updated_at", "last_engaged_at"):
        if lead.get(name):
            getattr(msg, name).CopyFrom(_ts(lead[name]))
    return msg


def _profile_problems(fields: Any, merge: bool) -> dict[str, str]:
    """The profile's own problems of input that already broke a limit (best effort: such input may
    be too deep for the profile checks to walk)."""
    if not isinstance(fields, dict):
        return {}
    try:
        return validate_profile(fields, partial=merge)
    except (RecursionError, ValueError, TypeError):
        return {}


class Outbox:
    """Publishes committed outbox rows to the bus in commit order, and has them deleted.

    Two ways in. The hot path (ingest) hands over the rows it just committed (`committed`) and they
    are published from memory; their delete rides on the next ingest transaction (`take_published`),
    so an event costs one transaction, not three. Every other write asks for a sweep (`sweep_soon`), which
    publishes what SQL holds in seq order; it also runs at startup, on settle and after a Redis
    failure, so a row committed before a crash always goes out (perhaps twice: consumers drop
    repeats by message id).
    """

    # Published rows whose delete waits for an ingest transaction; past this (or a quiet second) the
    # outbox loop deletes them itself.
    MAX_UNDELETED = 5000
    DELETE_BATCH = 200

    def __init__(self, db: Database, store: Store, publisher: Publisher) -> None:
        self._db = db
        self._store = store
        self._publisher = publisher
        self._lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._queue: list[OutboxRow] = []
        self._published: list[int] = []
        self._sweep = True

    def sweep_soon(self) -> None:
        """A write other than ingest committed outbox rows: the sweep publishes them."""
        self._sweep = True
        self._ready.set()

    def committed(self, rows: list[OutboxRow]) -> None:
        """Rows an ingest transaction just committed, to publish from memory. Called on the event
        loop in commit order (the SQLite executor is one thread; on PostgreSQL a lead's row lock
        orders its writes)."""
        if rows:
            self._queue.extend(rows)
            self._ready.set()

    def take_published(self) -> list[int]:
        """The published rows' seqs, for the next ingest transaction to delete, once there are enough
        to be worth a statement (under load a transaction commits every few milliseconds, and the
        DELETE was one of its seven statements)."""
        if len(self._published) < self.DELETE_BATCH:
            return []
        taken, self._published = self._published, []
        return taken

    def give_back(self, seqs: list[int]) -> None:
        """An ingest transaction that was to delete these rolled back: they stay to be deleted."""
        self._published.extend(seqs)

    async def flush(self) -> int:
        """Publish everything committed so far (the sweep); returns how many rows went out."""
        async with self._lock:
            self._sweep = False
            done = 0
            published, self._published = self._published, []
            if published:
                await self._db.run(self._store.mark_published, published)
            while True:
                pending = await self._db.run(self._store.pending_outbox)
                if not pending:
                    break
                await self._publish(pending)
                await self._db.run(self._store.mark_published, [seq for seq, *_ in pending])
                done += len(pending)
                swept = {seq for seq, *_ in pending}
                self._queue = [row for row in self._queue if row[0] not in swept]
            return done

    async def _drain(self) -> None:
        async with self._lock:
            # A sweep asked for meanwhile holds a row committed before some of the queue (say a
            # lead_updated before that lead's next event): it goes first, the sweep takes the queue.
            while self._queue and not self._sweep:
                rows, self._queue = self._queue, []
                await self._publish(rows)
                self._published.extend(seq for seq, *_ in rows)

    async def _publish(self, rows: list[OutboxRow]) -> None:
        # The span joins the first request's trace and links a few others (each event's messages carry
        # their own trace to the consumers anyway); each distinct carrier is read once.
        carriers = list(dict.fromkeys(t for *_, t in rows if t))[:10]
        contexts = [trace.get_current_span(extract(json.loads(t))).get_span_context() for t in carriers]
        parent = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0])) if contexts else None
        links = [trace.Link(c) for c in contexts[1:]]
        with _tracer.start_as_current_span("publish", context=parent, links=links), \
                redis_span("XADD bus", messages=len(rows)):
            await self._publisher.publish_encoded([(lead, payload, t) for _, lead, payload, t in rows])

    async def run(self) -> None:
        while True:
            woken = await wait_event(self._ready, 1.0)
            self._ready.clear()
            try:
                if self._sweep:  # rows other writes left in SQL, and the queue with them, in seq order
                    await self.flush()
                elif self._queue:
                    await self._drain()
                if self._published and (not woken or len(self._published) > self.MAX_UNDELETED):
                    async with self._lock:
                        published, self._published = self._published, []
                        await self._db.run(self._store.mark_published, published)
            except Exception:  # Redis down: rows stay in the outbox and the sweep sends them later.
                log.exception("outbox publishing failed; will retry")
                self._sweep = True
                await asyncio.sleep(0.5)


class IngestQueue:
    """Group commit: concurrent IngestEvents calls are merged into one transaction (SQL has one
    writer on SQLite anyway), which multiplies single-event throughput under load. The merged write
    runs in the trace of the first caller and links the others."""

    def __init__(self, db: Database, store: Store, clock: Clock, outbox: Outbox, max_events: int = 2000) -> None:
        self._db = db
        self._store = store
        self._clock = clock
        self._outbox = outbox
        self._max = max_events
        self._pending: list[tuple[list[EventIn], trace.SpanContext, asyncio.Future[list[EventResult]]]] = []
        self._wake = asyncio.Event()

    async def submit(self, batch: list[EventIn]) -> list[EventResult]:
        future: asyncio.Future[list[EventResult]] = asyncio.get_running_loop().create_future()
        self._pending.append((batch, trace.get_current_span().get_span_context(), future))
        self._wake.set()
        return await future

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                taken: list[tuple[list[EventIn], trace.SpanContext, asyncio.Future[list[EventResult]]]] = []
                size = 0
                while self._pending and (not taken or size + len(self._pending[0][0]) <= self._max):
                    item = self._pending.pop(0)
                    taken.append(item)
                    size += len(item[0])
                await self._write(taken)

    async def _write(
        self, taken: list[tuple[list[EventIn], trace.SpanContext, asyncio.Future[list[EventResult]]]]
    ) -> None:
        combined = [ev for batch, _, _ in taken for ev in batch]
        parent = trace.set_span_in_context(trace.NonRecordingSpan(taken[0][1]))
        links = [trace.Link(ctx) for _, ctx, _ in taken[1:] if ctx.is_valid]
        with _tracer.start_as_current_span("ingest", context=parent, links=links,
                                           attributes={"events": len(combined), "calls": len(taken)}):
            published = self._outbox.take_published()
            try:
                results, written = await self._db.run(self._store.ingest, combined, self._clock.now(), published,
                                                       urgent=True)
            except Exception as exc:
                self._outbox.give_back(published)
                for _, _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
                return
        self._outbox.committed(written)
        offset = 0
        for batch, _, future in taken:
            if not future.done():
                future.set_result(results[offset:offset + len(batch)])
            offset += len(batch)


@guard_requests(own={"IngestEvents": "events", "UpsertLeads": "leads", "UpsertLead": "fields_json"})
class ScoringServicer(scoring_pb2_grpc.ScoringServicer):
    def __init__(
        self, db: Database, store: Store, clock: Clock, outbox: Outbox, ingest: IngestQueue,
        versions: ModelVersions | None = None,
    ) -> None:
        self._ingest = ingest
        self._db = db
        self._store = store
        self._clock = clock
        self._outbox = outbox
        self._versions = versions

    async def UpsertLead(
        self, request: scoring_pb2.UpsertLeadRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.UpsertLeadReply:
        try:
            fields = limits.parse_json(request.fields_json or "{}", field="fields_json", check=False)
        except limits.InputError as exc:
            raise errors.invalid_fields(exc.problems) from exc
        problems = limits.problems_in(fields)
        if problems:  # listed with the profile's own problems, so one answer names every one
            raise errors.invalid_fields({**_profile_problems(fields, request.merge), **problems})
        if not isinstance(fields, dict):
            raise errors.invalid_fields({"fields_json": "must be a JSON object"})
        try:
            lead, created = await self._db.run(
                self._store.upsert_lead, request.id, fields, merge=request.merge, source=request.source or "api",
                must_exist=request.must_exist, now=self._clock.now())
        except InvalidInput as exc:
            raise errors.invalid_fields(exc.problems) from exc
        except NotFound:
            raise errors.NotFound(f"no lead {request.id}") from None
        except EmailTaken as exc:
            # Not the other lead's id: a 409 must not tell who else is on file (docs/INPUT-LIMITS.md).
            raise errors.Conflict(f"{exc}; update that lead, or send no id to match it by email",
                                  details={"field": "email"}) from exc
        self._outbox.sweep_soon()
        return scoring_pb2.UpsertLeadReply(lead=lead_proto(lead), created=created)

    async def UpsertLeads(
        self, request: scoring_pb2.UpsertLeadsRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.UpsertLeadsReply:
        if len(request.leads) > MAX_UPSERTS:
            raise errors.InvalidArgument(f"at most {MAX_UPSERTS} leads per call")
        results: list[scoring_pb2.UpsertLeadResult | None] = [None] * len(request.leads)
        todo: list[tuple[int, tuple[str, dict[str, Any], bool, str, bool]]] = []
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
                todo.append((i, (r.id, fields, r.merge, r.source or "api", r.must_exist)))
        done = await self._db.run(self._store.upsert_leads, [item for _, item in todo], self._clock.now())
        for (i, _), out in zip(todo, done, strict=True):
            if isinstance(out, InvalidInput):
                results[i] = scoring_pb2.UpsertLeadResult(
                    error_code="invalid", error_message="; ".join(f"{k} {v}" for k, v in out.problems.items()))
            elif isinstance(out, NotFound):
                results[i] = scoring_pb2.UpsertLeadResult(error_code="not_found",
                                                          error_message=f"no lead {request.leads[i].id}")
            elif isinstance(out, EmailTaken):
                results[i] = scoring_pb2.UpsertLeadResult(error_code="email_taken", error_message=str(out))
            else:
                results[i] = scoring_pb2.UpsertLeadResult(lead=lead_proto(out[0]), created=out[1])
        self._outbox.sweep_soon()
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
            email=request.email, cursor=request.cursor, limit=limit, now=self._clock.now())
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
        taken = iter(await self._ingest.submit(batch) if batch else [])
        replies = []
        for i in range(len(request.events)):
            if i in refused:
                replies.append(scoring_pb2.EventResult(error_code="invalid", error_message=refused[i]))
                continue
            r = next(taken)
            replies.append(scoring_pb2.EventResult(event_id=r.event_id, duplicate=r.duplicate, error_code=r.error_code,
                                                   error_message=r.error_message))
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
        return scoring_pb2.ScoringModelReply(name=model.name, version=model.version,
                                             definition_json=json.dumps(model.definition, default=str),
                                             versions_json=json.dumps(versions))

    async def PutScoringModel(
        self, request: scoring_pb2.PutScoringModelRequest, context: grpc.aio.ServicerContext
    ) -> scoring_pb2.PutScoringModelReply:
        assert self._versions is not None
        try:
            definition = json.loads(request.definition_json or "null")
        except json.JSONDecodeError as exc:
            return scoring_pb2.PutScoringModelReply(problems=[f"definition_json: not JSON ({exc.msg})"])
        version, problems = await self._db.run(self._versions.put_draft, definition, self._clock.now())
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
            version=result["version"], dry_run=result["dry_run"], leads=result["leads"],
            grade_changes=result["grade_changes"], stage_changes=result["stage_changes"],
            changes_json=json.dumps(result["changes"]))


class EchoServicer(scoring_pb2_grpc.EchoServicer):
    """The raw unary RPC baseline the benchmarks compare against."""

    async def Echo(self, request: scoring_pb2.EchoRequest, context: grpc.aio.ServicerContext) -> scoring_pb2.EchoReply:
        return scoring_pb2.EchoReply(payload=request.payload)


async def serve(settings: Settings) -> Running:
    db = open_database(settings, service="scoring", migrations_dir=MIGRATIONS)
    redis = redisconn.connect(settings)
    clock = make_clock(settings.clock, settings.redis_url)
    versions = ModelVersions(db.session)
    model = await db.run(versions.live, load_model(), clock.now())
    store = Store(db.session, model, DriverWrites(db.engine))

    async def refresh_model() -> None:
        """Another scoring process may have published a version: take it (checked every few seconds)."""
        live = await db.run(versions.published_version)
        if live is not None and live != store.model.version:
            store.model = await db.run(versions.model, live)
            log.info("scoring model version %d is live here too", live)
    outbox = Outbox(db, store, Publisher(redis, settings.bus_shards))
    ingest = IngestQueue(db, store, clock, outbox)
    lapse_lock = asyncio.Lock()

    async def run_lapses() -> int:
        async with lapse_lock:
            done = 0
            while True:
                n = await db.run(store.run_lapses, clock.now())
                done += n
                if n == 0:
                    return done

    async def settle() -> tuple[int, datetime | None]:
        await refresh_model()
        done = await run_lapses()
        done += await outbox.flush()
        return done, await db.run(store.next_lapse)

    async def timeline(lead_id: str, limit: int) -> list[common_pb2.TimelineItem]:
        items = await db.run(store.timeline, lead_id, limit)
        return [timeline_item(at=i["at"], kind=i["kind"], type=i["type"], summary=i["summary"],
                              details_json=json.dumps(i["details"], default=str), id=i["id"]) for i in items]

    async def erase(lead_id: str, _hash: str) -> int:
        erased, _ = await db.run(store.erase_lead, lead_id, clock.now())
        outbox.sweep_soon()
        return int(erased)

    async def lapse_loop() -> None:
        # Real time only: with a virtual clock, lapses run when the gateway settles at their due time.
        while settings.clock == "real":
            try:
                await refresh_model()
                if await run_lapses():
                    outbox.sweep_soon()
            except Exception:
                log.exception("inactivity sweep failed; will retry")
            await asyncio.sleep(5)

    def register(server: grpc.aio.Server) -> Iterable[str]:
        scoring_pb2_grpc.add_ScoringServicer_to_server(ScoringServicer(db, store, clock, outbox, ingest,
                                                                                  versions), server)
        scoring_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)
        admin = AdminServicer(settle=settle, timeline=timeline, erase=erase,
                              stats=lambda: db.counters)
        common_pb2_grpc.add_AdminServicer_to_server(admin, server)
        return [scoring_pb2.DESCRIPTOR.services_by_name[n].full_name for n in ("Scoring", "Echo")] + [
            common_pb2.DESCRIPTOR.services_by_name["Admin"].full_name]

    handle = await start_server(name="scoring", port=settings.grpc_port, register=register,
                                mesh_tokens=settings.mesh_tokens)
    await outbox.flush()  # anything committed but not published before a crash

    async def close() -> None:
        await outbox.flush()
        await redis.aclose()
        db.close()

    return Running(server=handle, tasks=[asyncio.create_task(outbox.run()), asyncio.create_task(lapse_loop()),
                                                asyncio.create_task(ingest.run())],
                   close=close)
