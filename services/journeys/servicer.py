"""journeys' gRPC methods: proto in, runtime call, proto out; domain errors become status codes here."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from nurture import errors, times
from nurture.api.journeys.v1 import journeys_pb2, journeys_pb2_grpc
from nurture.jsontypes import JsonValue
from nurture.rpcguard import guard_requests
from services.journeys import simulation, storage
from services.journeys.app.runner import Invalid, JourneysRuntime, JourneySummary, NotFound
from services.journeys.domain.definitions import Journey

SIMULATION_BUDGET = 2_000_000  # leads x days accepted by one Simulate call
MAX_LEADS_PER_CALL = 1000  # lead ids in one LeadsJourneys call


def _ts(target: Timestamp, value: datetime | None) -> None:
    if value is not None:
        target.FromDatetime(value)


def _enrollment(e: journeys_pb2.Enrollment, row: storage.EnrollmentRow) -> None:
    """One stored enrolment into its proto."""
    data = json.loads(row.data)
    e.journey, e.version, e.stage, e.step = row.journey, row.version, row.stage or "", row.step or ""
    e.status, e.instance, e.outcome = row.status, row.instance, row.outcome or ""
    if row.status == "active" and data.get("due"):
        _ts(e.next_step_at, times.parse_utc(data["due"]))
    _ts(e.entered_at, times.parse_utc(data["entered_at"]))


def _summary(s: JourneySummary) -> journeys_pb2.JourneySummary:
    return journeys_pb2.JourneySummary(**dataclasses.asdict(s))


@guard_requests()
class JourneysServicer(journeys_pb2_grpc.JourneysServicer):
    def __init__(self, runtime: JourneysRuntime) -> None:
        self.rt = runtime

    async def ListJourneys(self, request: journeys_pb2.ListJourneysRequest,
                           context: grpc.aio.ServicerContext) -> journeys_pb2.ListJourneysReply:
        return journeys_pb2.ListJourneysReply(journeys=[_summary(s) for s in self.rt.summaries()])

    async def GetJourney(self, request: journeys_pb2.GetJourneyRequest,
                         context: grpc.aio.ServicerContext) -> journeys_pb2.GetJourneyReply:
        try:
            journey, versions = self.rt.get(request.key, request.version)
        except NotFound as exc:
            raise errors.NotFound(str(exc), code="journey_not_found") from exc
        summary = next(s for s in self.rt.summaries() if s.key == request.key)
        reply = journeys_pb2.GetJourneyReply(summary=_summary(summary),
                                             definition_json=json.dumps(journey.document, default=str),
                                             version=journey.version)
        for v in versions:
            info = reply.versions.add(version=v.version, status=v.status)
            _ts(info.created_at, v.created_at)
            _ts(info.published_at, v.published_at)
        return reply

    async def PutJourney(self, request: journeys_pb2.PutJourneyRequest,
                         context: grpc.aio.ServicerContext) -> journeys_pb2.PutJourneyReply:
        try:
            document = json.loads(request.definition_json or "null")
        except ValueError as exc:
            raise errors.InvalidArgument(f"not JSON: {exc}",
                                         code="invalid_definition",
                                         details={"problems": [f"definition: not JSON: {exc}"]}) from exc
        if not isinstance(document, dict):
            raise errors.InvalidArgument("the definition must be an object",
                                         code="invalid_definition",
                                         details={"problems": ["definition: expected an object"]})
        try:
            version, _ = await self.rt.put(request.key, document, validate_only=request.validate_only)
        except Invalid as exc:
            raise errors.InvalidArgument(str(exc), code="invalid_definition",
                                         details={"problems": exc.problems}) from exc
        return journeys_pb2.PutJourneyReply(version=version)

    async def Publish(self, request: journeys_pb2.PublishRequest,
                      context: grpc.aio.ServicerContext) -> journeys_pb2.PublishReply:
        try:
            report = await self.rt.publish(request.key, request.version, migrate_leads=request.migrate,
                                           mapping=dict(request.step_mapping), dry_run=request.dry_run)
        except NotFound as exc:
            raise errors.NotFound(str(exc), code="journey_not_found") from exc
        except Invalid as exc:
            raise errors.InvalidArgument(str(exc), code="invalid_publish", details={"problems": exc.problems}) from exc
        return journeys_pb2.PublishReply(version=report["version"], published=not request.dry_run,
                                         report_json=json.dumps(report))

    async def Archive(self, request: journeys_pb2.ArchiveRequest,
                      context: grpc.aio.ServicerContext) -> journeys_pb2.ArchiveReply:
        try:
            status, version, changed = await self.rt.archive(request.key, request.archived)
        except NotFound as exc:
            raise errors.NotFound(str(exc), code="journey_not_found") from exc
        except Invalid as exc:  # never published: nothing to archive or bring back
            raise errors.Conflict(str(exc), code="journey_not_published",
                                  details={"problems": exc.problems}) from exc
        return journeys_pb2.ArchiveReply(status=status, version=version, changed=changed)

    async def LeadJourneys(self, request: journeys_pb2.LeadJourneysRequest,
                           context: grpc.aio.ServicerContext) -> journeys_pb2.LeadJourneysReply:
        if not request.lead_id:
            raise errors.InvalidArgument("lead_id is required")
        reply = journeys_pb2.LeadJourneysReply()
        for row in await self.rt.lead_journeys(request.lead_id):
            _enrollment(reply.enrollments.add(), row)
        return reply

    async def LeadsJourneys(self, request: journeys_pb2.LeadsJourneysRequest,
                            context: grpc.aio.ServicerContext) -> journeys_pb2.LeadsJourneysReply:
        if len(request.lead_ids) > MAX_LEADS_PER_CALL:
            raise errors.InvalidArgument(f"at most {MAX_LEADS_PER_CALL} lead ids in one call",
                                         details={"fields": {"lead_ids": f"more than {MAX_LEADS_PER_CALL}"}})
        if not all(request.lead_ids):
            raise errors.InvalidArgument("a lead id is empty", details={"fields": {"lead_ids": "holds an empty id"}})
        rows = await self.rt.leads_journeys(list(request.lead_ids))
        reply = journeys_pb2.LeadsJourneysReply()
        for lead_id in request.lead_ids:
            lead = reply.leads.add(lead_id=lead_id)
            for row in rows.get(lead_id, []):
                _enrollment(lead.enrollments.add(), row)
        return reply

    async def Members(self, request: journeys_pb2.MembersRequest,
                      context: grpc.aio.ServicerContext) -> journeys_pb2.MembersReply:
        try:
            ids, cursor = await self.rt.members(journey=request.journey, stage=request.stage, status=request.status,
                                                cursor=request.cursor, limit=request.limit, step=request.step)
        except NotFound as exc:
            raise errors.NotFound(str(exc), code="journey_not_found") from exc
        return journeys_pb2.MembersReply(lead_ids=ids, next_cursor=cursor)

    async def WhyNot(self, request: journeys_pb2.WhyNotRequest,
                     context: grpc.aio.ServicerContext) -> journeys_pb2.ReportReply:
        try:
            report = await self.rt.why_not(request.lead_id, request.journey)
        except NotFound as exc:
            raise errors.NotFound(str(exc), code="journey_not_found") from exc
        return journeys_pb2.ReportReply(report_json=json.dumps(report, default=str))

    async def LiveSteps(self, request: journeys_pb2.LiveStepsRequest,
                        context: grpc.aio.ServicerContext) -> journeys_pb2.LiveStepsReply:
        try:
            counts = await self.rt.live_steps(request.journey)
        except NotFound as exc:
            raise errors.NotFound(str(exc), code="journey_not_found") from exc
        return journeys_pb2.LiveStepsReply(leads=counts)

    async def CountedLeads(self, request: journeys_pb2.CountedLeadsRequest,
                           context: grpc.aio.ServicerContext) -> journeys_pb2.CountedLeadsReply:
        problems: dict[str, str] = {}
        if request.measure not in storage.COUNTED_MEASURES:
            problems["measure"] = f"must be one of {', '.join(storage.COUNTED_MEASURES)}"
        if not request.step and request.measure != "exited":
            problems["step"] = "is required (only exits may be counted over the whole journey)"
        if request.reason and request.measure != "exited":
            problems["reason"] = "applies to exits only"
        if not 0 <= request.limit <= 1000:
            problems["limit"] = "must be between 1 and 1000"
        start = getattr(request, "from").ToDatetime() if request.HasField("from") else None
        end = request.to.ToDatetime() if request.HasField("to") else None
        start, end = times.utc_or_none(start), times.utc_or_none(end)
        if start and end and start >= end:
            problems["from"] = "must be before to"
        if problems:
            raise errors.invalid_fields(problems)
        try:
            rows, cursor, total, leads = await self.rt.counted_leads(
                request.journey, request.step, request.measure, request.reason, start, end, request.cursor,
                request.limit or 50)
        except NotFound as exc:
            raise errors.NotFound(str(exc), code="journey_not_found") from exc
        return journeys_pb2.CountedLeadsReply(
            leads=[journeys_pb2.CountedLead(lead_id=lead, times=n) for lead, n in rows], next_cursor=cursor,
            total=total, leads_total=leads)

    async def Analytics(self, request: journeys_pb2.AnalyticsRequest,
                        context: grpc.aio.ServicerContext) -> journeys_pb2.ReportReply:
        start = getattr(request, "from").ToDatetime() if request.HasField("from") else None
        end = request.to.ToDatetime() if request.HasField("to") else None
        start, end = times.utc_or_none(start), times.utc_or_none(end)
        if start and end and start >= end:
            raise errors.InvalidArgument("from must be before to", code="invalid_range")
        try:
            report = await self.rt.analytics(request.key, start, end, stages=not request.without_stages)
        except NotFound as exc:
            raise errors.NotFound(str(exc), code="journey_not_found") from exc
        return journeys_pb2.ReportReply(report_json=json.dumps(report, default=str))

    async def Simulate(self, request: journeys_pb2.SimulateRequest,
                       context: grpc.aio.ServicerContext) -> journeys_pb2.ReportReply:
        try:
            body = json.loads(request.request_json or "{}")
            if not isinstance(body, dict):
                raise ValueError("expected an object")
            leads, days = int(body.get("leads", 100)), int(body.get("days", 60))
            seed = int(body.get("seed", 1))
            behaviour = body.get("behaviour") or {}
            if not isinstance(behaviour, dict):
                raise ValueError("behaviour must be an object")
        except (ValueError, TypeError) as exc:
            raise errors.InvalidArgument(str(exc), code="invalid_simulation") from exc
        if leads * days > SIMULATION_BUDGET:
            raise errors.InvalidArgument(
                f"leads x days must be at most {SIMULATION_BUDGET}; use `nurture simulate` for more",
                code="invalid_simulation")
        try:
            definitions, keys = self._chosen(body.get("journeys"))
            report = await asyncio.to_thread(simulation.simulate, journeys=keys, leads=leads, days=days, seed=seed,
                                             behaviour=behaviour, definitions=definitions)
        except simulation.SimulationError as exc:
            raise errors.InvalidArgument(str(exc), code="invalid_simulation",
                                         details={"problems": exc.problems}) from exc
        except NotFound as exc:
            raise errors.InvalidArgument(str(exc), code="invalid_simulation") from exc
        return journeys_pb2.ReportReply(report_json=json.dumps(report, default=str))

    def _chosen(self, raw: JsonValue) -> tuple[dict[str, Journey], list[str] | None]:
        """Journeys named as keys (published version) or {"key", "version"} (any stored version)."""
        published = self.rt.registry.published_map()
        if not raw:
            return published, None
        if not isinstance(raw, list):
            raise simulation.SimulationError("journeys must be a list")
        chosen: dict[str, Journey] = {}
        for item in raw:
            if isinstance(item, dict) and isinstance(item.get("key"), str) and \
                    isinstance(item.get("version", 0), int) and not isinstance(item.get("version", 0), bool):
                key, version = item["key"], int(item.get("version", 0))
            elif isinstance(item, str):
                key, version = item, 0
            else:  # found by fuzzing: [[null]] was a 500
                raise simulation.SimulationError('journeys must hold journey keys or {"key", "version"} objects')
            journey = self.rt.registry.resolve(str(key), version) if version else published.get(str(key))
            stored = self.rt.registry.versions(str(key))
            if journey is None and not version and stored:
                # A draft (never published, or only retired versions): known, and runnable by its version.
                raise simulation.SimulationError(
                    f"journey {key!r} has no published version; name a stored one: "
                    f'{{"key": {json.dumps(key)}, "version": {stored[-1]}}}',
                    [f"journeys: {key!r} has no published version (stored: "
                     f"{', '.join(str(v) for v in stored)})"])
            if journey is None:
                raise NotFound(f"unknown journey {key!r}" + (f" version {version}" if version else ""))
            chosen[journey.key] = journey
        return chosen, list(chosen)
