"""Messaging service wiring: gRPC in, engine/channels calls, proto out; bus consumer; worker loop."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc

from nurture import errors, redisconn
from nurture.admin import AdminServicer, timeline_item
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.bus import Consumer
from nurture.clock import make_clock
from nurture.db import open_database
from nurture.rpc import channel, start_server
from nurture.rpcguard import guard_requests, message_problems, problem_text
from nurture.service import Running
from nurture.settings import Settings
from services.messaging import abtest
from services.messaging.ads import AdsConnector
from services.messaging.catalog import Catalog, RenderError
from services.messaging.channels import Channels, NotFoundError, load_ad_suppression, personalization_rules
from services.messaging.engine import Engine, InvalidRequest, SendInput
from services.messaging.leads import LeadSource, email_hash
from services.messaging.policy import load_policy
from services.messaging.storage import Store, aware
from services.messaging.tokens import TokenError

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
T = TypeVar("T")


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
    except grpc.aio.AioRpcError as exc:
        # The peer's text may name internal addresses: logged here, not passed on.
        log.warning("a dependency failed: %s %s", exc.code().name, (exc.details() or "")[:300])
        raise errors.Unavailable("retry later") from exc


def message_proto(row: dict[str, Any]) -> messaging_pb2.Message:
    msg = messaging_pb2.Message(
        id=row["id"], lead_id=row["lead_id"], journey=row["journey"], journey_version=row["journey_version"],
        step=row["step"], channel=row["channel"], template=row["template"], category=row["category"],
        subject=row["subject"], status=row["status"], reason=row["reason"], attempts=row["attempts"],
        variant=row["variant"])
    msg.at.FromDatetime(aware(row["updated_at"]) or aware(row["created_at"]))  # type: ignore[arg-type]
    msg.due_at.FromDatetime(aware(row["due_at"]))  # type: ignore[arg-type]
    return msg


def send_input(request: messaging_pb2.SendRequest) -> SendInput:
    not_before = request.not_before.ToDatetime(tzinfo=UTC) if request.HasField("not_before") else None
    return SendInput(dedupe_key=request.dedupe_key, lead_id=request.lead_id, journey=request.journey,
                     journey_version=request.journey_version, step=request.step, channel=request.channel,
                     template=request.template, category=request.category, context_json=request.context_json,
                     not_before=not_before)


@guard_requests(own={"SendBatch": "items"})
class MessagingServicer(messaging_pb2_grpc.MessagingServicer):
    def __init__(self, engine: Engine, channels: Channels) -> None:
        self.engine = engine
        self.channels = channels

    async def Send(self, request: messaging_pb2.SendRequest, context: grpc.aio.ServicerContext
                   ) -> messaging_pb2.SendReply:
        item = send_input(request)
        result = await _guard(lambda: self.engine.send(
            dedupe_key=item.dedupe_key, lead_id=item.lead_id, journey=item.journey,
            journey_version=item.journey_version, step=item.step, channel=item.channel, template=item.template,
            category=item.category, context_json=item.context_json, not_before=item.not_before))
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
        return messaging_pb2.SendBatchReply(results=replies)

    async def ListTemplates(self, request: messaging_pb2.ListTemplatesRequest, context: grpc.aio.ServicerContext
                            ) -> messaging_pb2.ListTemplatesReply:
        return messaging_pb2.ListTemplatesReply(keys=self.engine.catalog.keys())

    async def Render(self, request: messaging_pb2.RenderRequest, context: grpc.aio.ServicerContext
                     ) -> messaging_pb2.RenderReply:
        async def run() -> messaging_pb2.RenderReply:
            lead: dict[str, Any] | None = {"id": "sample", "first_name": "Ana", "segment": "skilled_professional",
                                           "attributes": {"profession": "nurse", "countries_of_interest": ["CA"]}}
            if request.lead_id:
                lead = await self.engine.leads.get(request.lead_id)
                if lead is None:
                    raise NotFoundError(f"lead {request.lead_id!r} not found")
            try:
                ctx = json.loads(request.context_json or "{}")
            except ValueError as exc:
                raise InvalidRequest(f"context_json is not JSON: {exc}") from exc
            r = self.engine.catalog.render(request.template, lead or {}, context=ctx if isinstance(ctx, dict) else {})
            return messaging_pb2.RenderReply(subject=r.subject, html=r.html, text=r.text, variant=r.variant)
        return await _guard(run)

    async def ListMessages(self, request: messaging_pb2.ListMessagesRequest, context: grpc.aio.ServicerContext
                           ) -> messaging_pb2.ListMessagesReply:
        if not request.lead_id:
            raise errors.invalid_fields({"lead_id": "is required"})
        rows = await self.engine.db.run(self.engine.store.list_messages, request.lead_id, request.limit or 1000)
        return messaging_pb2.ListMessagesReply(items=[message_proto(r) for r in rows])

    async def Track(self, request: messaging_pb2.TrackRequest, context: grpc.aio.ServicerContext
                    ) -> messaging_pb2.TrackReply:
        if request.kind not in ("open", "click"):
            raise errors.invalid_fields({"kind": "must be open or click"})
        result = await _guard(lambda: self.channels.track(request.token, request.kind))
        return messaging_pb2.TrackReply(url=result.url, message_id=result.message_id, duplicate=result.duplicate)

    async def Unsubscribe(self, request: messaging_pb2.UnsubscribeRequest, context: grpc.aio.ServicerContext
                          ) -> messaging_pb2.UnsubscribeReply:
        result = await _guard(lambda: self.channels.unsubscribe(
            request.token, scope=request.scope, source=request.source or "page", dry_run=request.dry_run))
        return messaging_pb2.UnsubscribeReply(lead_id=result.lead_id, scope=result.scope, category=result.category,
                                              journey=result.journey, already=result.already)

    async def Subscriptions(self, request: messaging_pb2.SubscriptionsRequest,
                            context: grpc.aio.ServicerContext) -> messaging_pb2.SubscriptionsReply:
        if not request.email:
            return messaging_pb2.SubscriptionsReply()
        ehash = email_hash(request.email)
        found = await self.engine.db.run(self.engine.store.suppression_scopes, [ehash])
        return messaging_pb2.SubscriptionsReply(suppressed=[
            messaging_pb2.Suppression(channel="email", scope=scope, reason=reason)
            for scope, reason in sorted(found.get(ehash, {}).items())])

    async def Personalization(self, request: messaging_pb2.PersonalizationRequest,
                              context: grpc.aio.ServicerContext) -> messaging_pb2.PersonalizationReply:
        p = await _guard(lambda: self.channels.personalization(request.lead_id))
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
        spec = self.engine.catalog.specs.get(request.template)
        if spec is None:
            raise errors.NotFound(f"unknown template {request.template!r}")
        counts = await self.engine.db.run(self.engine.store.ab_counts, request.template)
        names = sorted(set(spec.variants) | set(counts)) if spec else sorted(counts)
        stats = [abtest.VariantStats(n or "default", **counts.get(n, {"sent": 0, "opened": 0, "clicked": 0}))
                 for n in names]
        rep = abtest.report(stats)
        return messaging_pb2.AbReportReply(
            template=request.template, metric=rep.metric, winner=rep.winner, p_value=rep.p_value, z=rep.z,
            significant=rep.significant, explanation=rep.explanation,
            variants=[messaging_pb2.AbVariant(name=v.name, sent=v.sent, opened=v.opened, clicked=v.clicked,
                                              open_rate=v.rate("open_rate"), click_rate=v.rate("click_rate"))
                      for v in rep.variants])


async def serve(settings: Settings) -> Running:
    load_ad_suppression()  # audiences.yaml: a bad rule fails the start, not a later bus message
    personalization_rules()  # personalization.yaml, likewise
    db = open_database(settings, service="messaging", migrations_dir=MIGRATIONS)
    redis = redisconn.connect(settings)
    clock = make_clock(settings.clock, settings.redis_url)
    store = Store(db.session)
    scoring_channel = channel(settings.address_of("scoring"), settings.mesh_token)
    journeys_channel = channel(settings.address_of("journeys"), settings.mesh_token)
    engine = Engine(settings=settings, clock=clock, db=db, store=store, catalog=Catalog(), redis=redis,
                    leads=LeadSource(scoring_channel), policy=load_policy())
    channels = Channels(engine, journeys_channel)
    consumer = Consumer(redis, group="messaging", shards=settings.bus_shards, handler=channels.handle_bus)

    ads = AdsConnector(db=db, store=store, base_url=settings.ads_url, token=settings.ads_token, now=clock.now)

    async def settle() -> tuple[int, datetime | None]:
        done = await consumer.drain()
        done += await engine.process_due()
        done += await engine.flush_feedback()
        done += await ads.push_due()
        dues = [d for d in (await db.run(store.next_due), await db.run(store.ads_next_due) if settings.ads_url
                            else None) if d is not None]
        return done, min(dues, default=None)

    async def ads_loop() -> None:
        while True:
            try:
                await ads.push_due()
            except Exception:
                log.exception("ads: push failed; will retry")
            await asyncio.sleep(1.0)

    async def timeline(lead_id: str, limit: int) -> list[common_pb2.TimelineItem]:
        rows = await db.run(store.timeline, lead_id, limit)
        return [timeline_item(at=aware(r["at"]), kind="message", type=r["type"],  # type: ignore[arg-type]
                              summary=r["summary"], details_json=r["details_json"], id=f"message:{r['id']}")
                for r in rows]

    async def erase(lead_id: str, ehash: str) -> int:
        removed = await db.run(store.erase, lead_id, ehash, clock.now())
        await redis.delete(redisconn.lead_key(lead_id, "msg:nurture"))
        return removed

    def register(server: grpc.aio.Server) -> Iterable[str]:
        messaging_pb2_grpc.add_MessagingServicer_to_server(MessagingServicer(engine, channels), server)
        common_pb2_grpc.add_AdminServicer_to_server(AdminServicer(settle=settle, timeline=timeline, erase=erase,
                              stats=lambda: db.counters),
                                                    server)
        return [messaging_pb2.DESCRIPTOR.services_by_name["Messaging"].full_name,
                common_pb2.DESCRIPTOR.services_by_name["Admin"].full_name]

    handle = await start_server(name="messaging", port=settings.grpc_port, register=register,
                                mesh_tokens=settings.mesh_tokens)
    tasks: list[asyncio.Task[None]] = []
    if settings.clock == "real":
        # Virtual time: only Settle consumes the bus and delivers, so runs are deterministic.
        tasks.append(asyncio.create_task(consumer.run()))
        tasks.append(asyncio.create_task(engine.run()))
        tasks.append(asyncio.create_task(ads_loop()))

    async def close() -> None:
        await ads.close()
        await engine.close()
        await scoring_channel.close()
        await journeys_channel.close()
        await redis.aclose()
        db.close()

    return Running(server=handle, tasks=tasks, close=close)
