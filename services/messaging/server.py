"""Messaging service wiring (process bootstrap only): database, channels, delivery, the servicer, the bus
consumer and the worker loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import grpc

from nurture import redisconn
from nurture.admin import AdminServicer, TimerQueue, Timers, timeline_item
from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.messaging.v1 import deliverability_pb2, deliverability_pb2_grpc, messaging_pb2, messaging_pb2_grpc
from nurture.bus import BusDeadLetters, Consumer
from nurture.clock import make_clock
from nurture.db import open_database
from nurture.rpc import channel, start_server
from nurture.service import Running
from nurture.settings import Settings
from services.messaging.ads import AdsConnector
from services.messaging.app.channels import Channels, load_ad_suppression, personalization_rules
from services.messaging.app.deliverability import Deliverability, start_bounce_listener
from services.messaging.app.delivery import Delivery
from services.messaging.app.templates import REFRESH_EVERY_S
from services.messaging.app.unsubscribe_requests import UnsubscribeRequests
from services.messaging.clients import LeadSource
from services.messaging.deliverability_servicer import DeliverabilityServicer
from services.messaging.deliverability_store import DeliverabilityStore
from services.messaging.domain.bounces import load_deliverability
from services.messaging.domain.catalog import Catalog
from services.messaging.domain.dkim import load_signer
from services.messaging.domain.policy import load_policy
from services.messaging.servicer import MessagingServicer
from services.messaging.storage import Store, aware

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")


async def serve(settings: Settings) -> Running:
    load_ad_suppression()  # audiences.yaml: a bad rule fails the start, not a later bus message
    personalization_rules()  # personalization.yaml, likewise
    guards_policy = load_deliverability()  # deliverability.yaml, likewise
    dkim = load_signer(settings.dkim_keys, settings.dkim_selectors, settings.dkim_domain)  # a bad key fails the start
    db = open_database(settings, service="messaging", migrations_dir=MIGRATIONS)
    redis = redisconn.connect(settings)
    clock = make_clock(settings)
    store = Store(db.session)
    scoring_channel = channel(settings.address_of("scoring"), settings.mesh_token)
    journeys_channel = channel(settings.address_of("journeys"), settings.mesh_token)
    catalog = Catalog()
    bounce_domain = (settings.bounce_domain or dkim.primary or catalog.sender_address.rpartition("@")[2]).lower()
    deliverability = Deliverability(store=store, dstore=DeliverabilityStore(db.session), db=db, policy=guards_policy,
                                    dkim=dkim, bounce_domain=bounce_domain,
                                    secrets=(settings.secret, settings.secret_previous), now=clock.now, redis=redis)
    engine = Delivery(settings=settings, clock=clock, db=db, store=store, catalog=catalog, redis=redis,
                    leads=LeadSource(scoring_channel), policy=load_policy(), deliverability=deliverability)
    bounce_host, _, bounce_port = settings.bounce_smtp_addr.rpartition(":")
    bounces = await start_bounce_listener(deliverability, bounce_host or "127.0.0.1", int(bounce_port or 0))
    bound = bounces.sockets[0].getsockname()
    bounce_smtp = f"{bound[0]}:{bound[1]}"
    log.info("bounce receiver listening on %s for @%s", bounce_smtp, bounce_domain)
    channels = Channels(engine, journeys_channel)
    await engine.templates.ensure()  # seeds the store on first start; compiles every live version once
    consumer = Consumer(redis, group="messaging", shards=settings.bus_shards, handler=channels.handle_bus)
    unsubscribes = UnsubscribeRequests(redis, lambda token, scope, source: channels.unsubscribe(
        token, scope=scope, source=source, dry_run=False))

    ads = AdsConnector(db=db, store=store, base_url=settings.ads_url, token=settings.ads_token, now=clock.now)

    async def settle() -> tuple[int, datetime | None]:
        await engine.templates.refresh()  # what another replica published is what this one sends now
        done = await unsubscribes.drain()  # first: consent wins over what the bus would send
        done += await consumer.drain()
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

    async def templates_loop() -> None:
        while True:
            await asyncio.sleep(REFRESH_EVERY_S)
            try:
                await engine.templates.refresh()
            except Exception:
                log.exception("templates: refresh failed; will retry")

    async def timeline(lead_id: str, limit: int) -> list[common_pb2.TimelineItem]:
        rows = await db.run(store.timeline, lead_id, limit)
        return [timeline_item(at=aware(r.at), kind="message", type=r.type,  # type: ignore[arg-type]
                              summary=r.summary, details_json=r.details_json, id=f"message:{r.id}")
                for r in rows]

    async def erase(lead_id: str, ehash: str) -> int:
        removed = await db.run(store.erase, lead_id, ehash, clock.now())
        await redis.delete(redisconn.lead_key(lead_id, "msg:nurture"))
        return removed

    async def timers() -> Timers:
        now = clock.now()
        pending, due, first = await db.run(store.scheduled_summary, now)
        return Timers(now=now, queues=[TimerQueue("scheduled messages", pending, due, first)])

    def register(server: grpc.aio.Server) -> Iterable[str]:
        messaging_pb2_grpc.add_MessagingServicer_to_server(MessagingServicer(engine, channels), server)
        deliverability_pb2_grpc.add_DeliverabilityServicer_to_server(
            DeliverabilityServicer(deliverability, bounce_smtp), server)
        common_pb2_grpc.add_AdminServicer_to_server(AdminServicer(
            settle=settle, timeline=timeline, erase=erase, stats=lambda: db.counters, timers=timers,
            dead_letters=BusDeadLetters(consumer)), server)
        return [messaging_pb2.DESCRIPTOR.services_by_name["Messaging"].full_name,
                common_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
                deliverability_pb2.DESCRIPTOR.services_by_name["Deliverability"].full_name]

    handle = await start_server(name="messaging", port=settings.grpc_port, register=register,
                                mesh_tokens=settings.mesh_tokens)
    tasks: list[asyncio.Task[None]] = []
    if settings.clock == "real":
        # Virtual time: only Settle consumes the bus and delivers, so runs are deterministic.
        tasks.append(asyncio.create_task(consumer.run()))
        tasks.append(asyncio.create_task(engine.run()))
        tasks.append(asyncio.create_task(ads_loop()))
        tasks.append(asyncio.create_task(templates_loop()))
    # Both clocks: an unsubscribe the gateway queued is applied within a second, not at the next Settle.
    tasks.append(asyncio.create_task(unsubscribes.run()))

    async def close() -> None:
        bounces.close()
        await ads.close()
        await engine.close()
        await scoring_channel.close()
        await journeys_channel.close()
        await redis.aclose()
        db.close()

    return Running(server=handle, tasks=tasks, close=close)
