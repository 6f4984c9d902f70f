"""messaging's gRPC methods: proto in, application call, proto out; errors to status codes."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any, TypeVar

import grpc
from email_validator import EmailNotValidError, validate_email

from nurture import errors, telemetry
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.rpcguard import guard_requests, message_problems, problem_text
from services.messaging.app.channels import Channels, NotFoundError
from services.messaging.app.delivery import Delivery, InvalidRequest, SendInput
from services.messaging.app.segments import InvalidSegmentCopy, SegmentDetail, UnknownSegment
from services.messaging.app.templates import SAMPLE_LEAD, InvalidTemplate, UnknownTemplate
from services.messaging.clients import Lead, anonymous_profile, email_hash
from services.messaging.domain import abtest
from services.messaging.domain.catalog import RenderError
from services.messaging.domain.content import VARIABLES
from services.messaging.domain.tokens import TokenError
from services.messaging.segment_store import SegmentRow
from services.messaging.storage import Message, aware
from services.messaging.template_store import TemplateRow, VersionConflict

log = logging.getLogger(__name__)
T = TypeVar("T")
# A page of leads asks for its addresses' suppressions in one call (the leads API pages hold at most 1,000).
MAX_SUBSCRIPTION_ADDRESSES = 1000
# ListMessages by ids: the gateway asks for the messages a batch of posted opens and clicks names (a batch
# holds at most 1,000 events).
MAX_LISTED_IDS = 1000


async def _guard(fn: Callable[[], Awaitable[T]]) -> T:
    """Domain errors → the platform's errors (nurture.errors gives each its status); the text is for a person."""
    try:
        return await fn()
    except InvalidRequest as exc:
        raise errors.InvalidArgument(str(exc)) from exc
    except TokenError as exc:
        raise errors.InvalidArgument(f"this link is not valid: {exc}", code="invalid_token") from exc
    except NotFoundError as exc:
        raise errors.NotFound(str(exc)) from exc
    except RenderError as exc:
        raise errors.InvalidArgument(str(exc)) from exc
    except InvalidTemplate as exc:
        raise errors.InvalidArgument(str(exc), code="invalid_template", details={"problems": exc.problems}) from exc
    except UnknownTemplate as exc:
        raise errors.NotFound(str(exc), code="template_not_found") from exc
    except InvalidSegmentCopy as exc:
        raise errors.InvalidArgument(str(exc), code="invalid_segment_copy",
                                     details={"problems": exc.problems}) from exc
    except UnknownSegment as exc:
        raise errors.NotFound(str(exc), code="segment_not_found") from exc
    except VersionConflict as exc:
        raise errors.Conflict(str(exc)) from exc
    except grpc.aio.AioRpcError as exc:
        # The peer's text may name internal addresses: logged here, not passed on.
        log.warning("a dependency failed: %s %s", exc.code().name, (exc.details() or "")[:300])
        raise errors.Unavailable("retry later") from exc




def _context(raw: str) -> dict[str, Any]:
    try:
        ctx = json.loads(raw or "{}")
    except ValueError as exc:
        raise InvalidRequest(f"context_json is not JSON: {exc}") from exc
    if not isinstance(ctx, dict):
        raise InvalidRequest("context_json must be a JSON object")
    return ctx


def _content_input(c: messaging_pb2.TemplateContent) -> dict[str, Any]:
    """A TemplateContent as the JSON-like object the library validates."""
    try:
        variants = json.loads(c.variants_json or "{}")
    except ValueError as exc:
        raise errors.InvalidArgument("variants is not JSON", code="invalid_template",
                                     details={"problems": [f"variants: not JSON: {exc}"]}) from exc
    return {"subject": c.subject, "preheader": c.preheader, "body": c.body, "text": c.text, "variants": variants,
            "topic": c.topic, "format": c.format, "cta_label": c.cta_label, "cta_path": c.cta_path}


def message_proto(row: Message) -> messaging_pb2.Message:
    msg = messaging_pb2.Message(
        id=row.id, lead_id=row.lead_id, journey=row.journey, journey_version=row.journey_version,
        step=row.step, channel=row.channel, template=row.template, category=row.category,
        subject=row.subject, status=row.status, reason=row.reason, attempts=row.attempts,
        variant=row.variant, template_version=row.template_version or 0)
    msg.at.FromDatetime(aware(row.updated_at) or aware(row.created_at))  # type: ignore[arg-type]
    msg.due_at.FromDatetime(aware(row.due_at))  # type: ignore[arg-type]
    return msg


def send_input(request: messaging_pb2.SendRequest) -> SendInput:
    not_before = request.not_before.ToDatetime(tzinfo=UTC) if request.HasField("not_before") else None
    return SendInput(dedupe_key=request.dedupe_key, lead_id=request.lead_id, journey=request.journey,
                     journey_version=request.journey_version, step=request.step, channel=request.channel,
                     template=request.template, category=request.category, context_json=request.context_json,
                     not_before=not_before, budget_exempt=request.budget_exempt)


@guard_requests(own={"SendBatch": "items"})
class MessagingServicer(messaging_pb2_grpc.MessagingServicer):
    def __init__(self, engine: Delivery, channels: Channels) -> None:
        self.engine = engine
        self.channels = channels

    async def Send(self, request: messaging_pb2.SendRequest, context: grpc.aio.ServicerContext
                   ) -> messaging_pb2.SendReply:
        item = send_input(request)
        result = await _guard(lambda: self.engine.send(
            dedupe_key=item.dedupe_key, lead_id=item.lead_id, journey=item.journey,
            journey_version=item.journey_version, step=item.step, channel=item.channel, template=item.template,
            category=item.category, context_json=item.context_json, not_before=item.not_before,
            budget_exempt=item.budget_exempt))
        telemetry.tag_ids(lead_ids=(item.lead_id,), message_ids=(result.message_id,))
        return messaging_pb2.SendReply(message_id=result.message_id, status=result.status, reason=result.reason)

    async def SendBatch(self, request: messaging_pb2.SendBatchRequest, context: grpc.aio.ServicerContext
                        ) -> messaging_pb2.SendBatchReply:
        # Each item is held to the input limits alone: a bad one is "invalid", the others go on.
        refused = {i: problem_text(p) for i, r in enumerate(request.items) if (p := message_problems(r))}
        items = [send_input(r) for i, r in enumerate(request.items) if i not in refused]
        results = iter(await _guard(lambda: self.engine.send_many(items)) if items else [])
        replies = []
        for i in range(len(request.items)):
            if i in refused:
                replies.append(messaging_pb2.SendReply(status="invalid", reason=refused[i]))
            else:
                r = next(results)
                replies.append(messaging_pb2.SendReply(message_id=r.message_id, status=r.status, reason=r.reason))
        telemetry.tag_ids(lead_ids=(i.lead_id for i in items), message_ids=(r.message_id for r in replies))
        return messaging_pb2.SendBatchReply(results=replies)

    async def Withdraw(self, request: messaging_pb2.WithdrawRequest, context: grpc.aio.ServicerContext
                       ) -> messaging_pb2.WithdrawReply:
        if not request.lead_id or not request.journey or not request.occurrence_prefix.endswith("."):
            raise errors.InvalidArgument("lead_id, journey and occurrence_prefix (ending in '.') are required")
        n = await _guard(lambda: self.engine.withdraw(
            lead_id=request.lead_id, journey=request.journey, journey_version=request.journey_version,
            occurrence_prefix=request.occurrence_prefix, reason=request.reason))
        return messaging_pb2.WithdrawReply(withdrawn=n)

    async def ListTemplates(self, request: messaging_pb2.ListTemplatesRequest, context: grpc.aio.ServicerContext
                            ) -> messaging_pb2.ListTemplatesReply:
        listed = await self.engine.templates.list()
        keys = self.engine.templates.keys()
        if request.with_variants:
            keys = [k for k in keys if self._variants(k)]
            listed = [(row, subject) for row, subject in listed if self._variants(row.key)]
        return messaging_pb2.ListTemplatesReply(
            keys=keys, items=[self._summary(row, subject) for row, subject in listed])

    def _variants(self, key: str) -> int:
        """How many A/B variants the live version of `key` declares (0 when it has none or none is live)."""
        live = self.engine.templates.live(key)
        return len(live.variants) if live is not None else 0

    def _summary(self, row: TemplateRow, subject: str) -> messaging_pb2.TemplateSummary:
        spec = self.engine.catalog.spec(row.key)
        out = messaging_pb2.TemplateSummary(key=row.key, published_version=row.published_version,
                                            latest_version=row.latest_version, journey=spec.journey,
                                            category=spec.category, subject=subject,
                                            variants=self._variants(row.key))
        out.updated_at.FromDatetime(row.updated_at)
        return out

    async def GetTemplate(self, request: messaging_pb2.GetTemplateRequest, context: grpc.aio.ServicerContext
                          ) -> messaging_pb2.GetTemplateReply:
        detail = await _guard(lambda: self.engine.templates.get(request.key, request.version))
        c = detail.shown.content
        about = self.engine.content_of(request.key, detail.shown.version)   # what its sends carry
        reply = messaging_pb2.GetTemplateReply(
            summary=self._summary(detail.row, c.subject), version=detail.shown.version, status=detail.shown.status,
            content=messaging_pb2.TemplateContent(subject=c.subject, preheader=c.preheader, body=c.body, text=c.text,
                                                  variants_json=json.dumps(c.as_dict()["variants"]),
                                                  topic=about["topic"], format=about["format"],
                                                  cta_label=c.cta_label, cta_path=c.cta_path),
            variables=[messaging_pb2.TemplateVariable(name=n, description=d) for n, d in VARIABLES.items()])
        for v in detail.versions:
            info = reply.versions.add(version=v.version, status=v.status, source=v.source)
            info.created_at.FromDatetime(v.created_at)
            if v.published_at is not None:
                info.published_at.FromDatetime(v.published_at)
        return reply

    async def PutTemplate(self, request: messaging_pb2.PutTemplateRequest, context: grpc.aio.ServicerContext
                          ) -> messaging_pb2.PutTemplateReply:
        raw = _content_input(request.content)
        version = await _guard(lambda: self.engine.templates.put_draft(request.key, raw,
                                                                       validate_only=request.validate_only))
        return messaging_pb2.PutTemplateReply(key=request.key, version=version)

    async def PublishTemplate(self, request: messaging_pb2.PublishTemplateRequest,
                              context: grpc.aio.ServicerContext) -> messaging_pb2.PublishTemplateReply:
        if request.version < 1:
            raise errors.invalid_fields({"version": "is required (a version number)"})
        previous = await _guard(lambda: self.engine.templates.publish(request.key, request.version))
        return messaging_pb2.PublishTemplateReply(key=request.key, version=request.version, previous_version=previous)

    # --- segments' copy ------------------------------------------------------------------------------
    @staticmethod
    def _segment_summary(row: SegmentRow, label: str) -> messaging_pb2.SegmentCopySummary:
        out = messaging_pb2.SegmentCopySummary(segment=row.key, published_version=row.published_version,
                                               latest_version=row.latest_version, label=label)
        out.updated_at.FromDatetime(row.updated_at)
        return out

    async def ListSegmentCopy(self, request: messaging_pb2.ListSegmentCopyRequest,
                              context: grpc.aio.ServicerContext) -> messaging_pb2.ListSegmentCopyReply:
        listed = await self.engine.templates.segments.list()
        return messaging_pb2.ListSegmentCopyReply(items=[self._segment_summary(r, label) for r, label in listed])

    async def GetSegmentCopy(self, request: messaging_pb2.GetSegmentCopyRequest,
                             context: grpc.aio.ServicerContext) -> messaging_pb2.GetSegmentCopyReply:
        detail: SegmentDetail = await _guard(lambda: self.engine.templates.segments.get(request.segment,
                                                                                        request.version))
        c = detail.shown.content
        reply = messaging_pb2.GetSegmentCopyReply(
            summary=self._segment_summary(detail.row, c.label), version=detail.shown.version,
            status=detail.shown.status, copy=messaging_pb2.SegmentCopy(
                label=c.label, intro=c.intro, recommended_content_json=json.dumps(c.recommended_dicts())))
        for v in detail.versions:
            info = reply.versions.add(version=v.version, status=v.status, source=v.source)
            info.created_at.FromDatetime(v.created_at)
            if v.published_at is not None:
                info.published_at.FromDatetime(v.published_at)
        return reply

    async def PutSegmentCopy(self, request: messaging_pb2.PutSegmentCopyRequest,
                             context: grpc.aio.ServicerContext) -> messaging_pb2.PutSegmentCopyReply:
        c = request.copy
        raw: dict[str, Any] = {"label": c.label, "intro": c.intro}
        try:
            raw["recommended_content"] = json.loads(c.recommended_content_json or "[]")
        except ValueError as exc:
            raise errors.invalid_fields({"recommended_content": f"is not JSON: {exc}"}) from exc
        version = await _guard(lambda: self.engine.templates.segments.put_draft(
            request.segment, raw, validate_only=request.validate_only))
        return messaging_pb2.PutSegmentCopyReply(segment=request.segment, version=version)

    async def PublishSegmentCopy(self, request: messaging_pb2.PublishSegmentCopyRequest,
                                 context: grpc.aio.ServicerContext) -> messaging_pb2.PublishSegmentCopyReply:
        if request.version < 1:
            raise errors.invalid_fields({"version": "is required (a version number)"})
        previous = await _guard(lambda: self.engine.templates.segments.publish(request.segment, request.version))
        return messaging_pb2.PublishSegmentCopyReply(segment=request.segment, version=request.version,
                                                     previous_version=previous)

    async def _lead(self, lead_id: str) -> Lead:
        if not lead_id:
            return SAMPLE_LEAD.copy()
        lead = await self.engine.leads.get(lead_id)
        if lead is None:
            raise NotFoundError(f"lead {lead_id!r} not found")
        return lead

    async def PreviewTemplate(self, request: messaging_pb2.PreviewTemplateRequest,
                              context: grpc.aio.ServicerContext) -> messaging_pb2.PreviewTemplateReply:
        async def run() -> messaging_pb2.PreviewTemplateReply:
            lead = await self._lead(request.lead_id)
            unsaved = _content_input(request.content) if request.HasField("content") else None
            r = await self.engine.templates.preview(request.key, request.version, lead,
                                                    _context(request.context_json), request.variant, unsaved)
            return messaging_pb2.PreviewTemplateReply(subject=r.subject, preheader=r.preheader, html=r.html,
                                                      text=r.text, variant=r.variant, version=r.version)
        return await _guard(run)

    async def TestSendTemplate(self, request: messaging_pb2.TestSendRequest, context: grpc.aio.ServicerContext
                               ) -> messaging_pb2.TestSendReply:
        # The same check as a lead's address at creation (email-validator, no DNS lookup), so a test copy
        # goes to any address a lead may have, one beyond ASCII too; CR/LF or a list is refused.
        try:
            to = validate_email(request.to.strip(), check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise errors.invalid_fields({"to": f"must be one email address ({exc})"[:200]}) from exc

        async def run() -> messaging_pb2.TestSendReply:
            lead = await self._lead(request.lead_id)
            rendered, result = await self.engine.send_test(request.key, request.version, lead, to,
                                                           _context(request.context_json))
            if not result.ok:
                raise errors.Unavailable(f"the test copy was not accepted: {result.reason}"[:300])
            return messaging_pb2.TestSendReply(to=to, version=rendered.version, subject=rendered.subject)
        return await _guard(run)

    async def Render(self, request: messaging_pb2.RenderRequest, context: grpc.aio.ServicerContext
                     ) -> messaging_pb2.RenderReply:
        async def run() -> messaging_pb2.RenderReply:
            lead: Lead | None = {"id": "sample", "first_name": "Ana", "segment": "skilled_professional",
                                           "attributes": {"profession": "nurse", "countries_of_interest": ["CA"]}}
            if request.lead_id:
                lead = await self.engine.leads.get(request.lead_id)
                if lead is None:
                    raise NotFoundError(f"lead {request.lead_id!r} not found")
            try:
                ctx = json.loads(request.context_json or "{}")
            except ValueError as exc:
                raise InvalidRequest(f"context_json is not JSON: {exc}") from exc
            compiled = await self.engine.templates.compiled(request.template)
            r = self.engine.catalog.render(request.template, lead or {}, context=ctx if isinstance(ctx, dict) else {},
                                           content=compiled, segments=self.engine.templates.segments.live())
            return messaging_pb2.RenderReply(subject=r.subject, html=r.html, text=r.text, variant=r.variant)
        return await _guard(run)

    async def ListMessages(self, request: messaging_pb2.ListMessagesRequest, context: grpc.aio.ServicerContext
                           ) -> messaging_pb2.ListMessagesReply:
        if not request.lead_id:
            raise errors.invalid_fields({"lead_id": "is required"})
        if len(request.ids) > MAX_LISTED_IDS:
            raise errors.invalid_fields({"ids": f"at most {MAX_LISTED_IDS} ids, got {len(request.ids)}"})
        rows = await self.engine.db.run(self.engine.store.list_messages, request.lead_id, request.limit or 1000,
                                        list(request.ids) or None)
        items = [message_proto(r) for r in rows]
        # What its tracked opens and clicks carry: the gateway credits a posted one so.
        for row, item in zip(rows, items, strict=True):
            item.content.update(self.engine.content_of(item.template, item.template_version, row.step_stage))
        return messaging_pb2.ListMessagesReply(items=items)

    async def Track(self, request: messaging_pb2.TrackRequest, context: grpc.aio.ServicerContext
                    ) -> messaging_pb2.TrackReply:
        if request.kind not in ("open", "click"):
            raise errors.invalid_fields({"kind": "must be open or click"})
        result = await _guard(lambda: self.channels.track(request.token, request.kind))
        return messaging_pb2.TrackReply(url=result.url, message_id=result.message_id, duplicate=result.duplicate,
                                        lead_id=result.lead_id)

    async def Unsubscribe(self, request: messaging_pb2.UnsubscribeRequest, context: grpc.aio.ServicerContext
                          ) -> messaging_pb2.UnsubscribeReply:
        result = await _guard(lambda: self.channels.unsubscribe(
            request.token, scope=request.scope, source=request.source or "page", dry_run=request.dry_run))
        return messaging_pb2.UnsubscribeReply(lead_id=result.lead_id, scope=result.scope, category=result.category,
                                              journey=result.journey, already=result.already)

    async def Subscriptions(self, request: messaging_pb2.SubscriptionsRequest,
                            context: grpc.aio.ServicerContext) -> messaging_pb2.SubscriptionsReply:
        if len(request.emails) > MAX_SUBSCRIPTION_ADDRESSES:
            raise errors.invalid_fields({"emails": f"at most {MAX_SUBSCRIPTION_ADDRESSES} addresses"})
        asked = {address: email_hash(address) for address in {request.email, *request.emails} if address}
        if not asked:
            return messaging_pb2.SubscriptionsReply()
        found = await self.engine.db.run(self.engine.store.suppression_scopes, sorted(set(asked.values())))

        def of(address: str) -> list[messaging_pb2.Suppression]:
            return [messaging_pb2.Suppression(channel="email", scope=scope, reason=reason)
                    for scope, reason in sorted(found.get(asked[address], {}).items())]
        return messaging_pb2.SubscriptionsReply(
            suppressed=of(request.email) if request.email else [],
            by_email={address: messaging_pb2.AddressSuppressions(suppressed=of(address))
                      for address in request.emails if address and found.get(asked[address])})

    async def Personalization(self, request: messaging_pb2.PersonalizationRequest,
                              context: grpc.aio.ServicerContext) -> messaging_pb2.PersonalizationReply:
        try:
            anonymous = anonymous_profile(request.anonymous_profile_json) if request.anonymous_profile_json else None
        except ValueError as exc:
            raise errors.invalid_fields({"anonymous_profile_json": str(exc)}) from exc
        p = await _guard(lambda: self.channels.personalization(request.lead_id, anonymous))
        return messaging_pb2.PersonalizationReply(
            segment=p.segment, featured_countries=p.featured_countries,
            recommended_content_json=json.dumps(p.recommended_content),
            next_best_action_json=json.dumps(p.next_best_action), journeys_available=p.journeys_available)

    async def Audience(self, request: messaging_pb2.AudienceRequest, context: grpc.aio.ServicerContext
                       ) -> messaging_pb2.AudienceReply:
        if not request.name:
            raise errors.invalid_fields({"name": "is required"})
        page = await _guard(lambda: self.channels.audience(request.name, request.cursor, request.limit))
        return messaging_pb2.AudienceReply(
            name=page.name, lead_ids=page.lead_ids, suppressed=list(page.suppressed),
            suppressed_reasons=list(page.suppressed.values()), next_cursor=page.next_cursor,
            journeys_available=page.journeys_available)

    async def AbReport(self, request: messaging_pb2.AbReportRequest, context: grpc.aio.ServicerContext
                       ) -> messaging_pb2.AbReportReply:
        await self.engine.templates.ensure()
        live = self.engine.templates.live(request.template)
        if live is None:
            raise errors.NotFound(f"unknown template {request.template!r}")
        counts = await self.engine.db.run(self.engine.store.ab_counts, request.template)
        # The report is of the live version's variants: a send of none (made before the test began) or of
        # a variant the live version no longer declares is no competitor of the test's own (it was ranked
        # as `default`, and could be named the winner). A template without variants reports what it sent.
        names = sorted(live.variants) if live.variants else sorted(counts)
        stats = [abtest.VariantStats(n or "default", **counts.get(n, {"sent": 0, "opened": 0, "clicked": 0}))
                 for n in names]
        rep = abtest.report(stats)
        return messaging_pb2.AbReportReply(
            template=request.template, metric=rep.metric, winner=rep.winner, p_value=rep.p_value, z=rep.z,
            significant=rep.significant, explanation=rep.explanation,
            variants=[messaging_pb2.AbVariant(name=v.name, sent=v.sent, opened=v.opened, clicked=v.clicked,
                                              open_rate=v.rate("open_rate"), click_rate=v.rate("click_rate"))
                      for v in rep.variants])
