"""Two messaging replicas over one record: a version published (or a new template made and published)
through one replica is what the other sends from after its next refresh, which reads each template's
published version and compiles only what changed; a rollback travels the same way."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.clock import VirtualClock
from nurture.db import open_database
from nurture.redisconn import connect_sync
from nurture.settings import Settings
from services.messaging.app.templates import TemplateLibrary
from services.messaging.domain.catalog import Catalog
from tests.conftest import mesh_channel, start_service

pytestmark = pytest.mark.anyio

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "messaging" / "migrations"
KEY = "skilled_professional.email_01"


def live_version(library: TemplateLibrary, key: str = KEY) -> int | None:
    live = library.live(key)
    return live.version if live is not None else None


async def test_a_publish_at_one_replica_is_sent_from_at_the_other_after_its_refresh(settings: Settings) -> None:
    db = open_database(settings, service="messaging", migrations_dir=MIGRATIONS)
    redis = connect_sync(settings)
    try:
        catalog = Catalog()
        a = TemplateLibrary(db=db, catalog=catalog, clock=VirtualClock(redis))
        b = TemplateLibrary(db=db, catalog=catalog, clock=VirtualClock(redis))
        await a.ensure()
        await b.ensure()
        assert await b.refresh() == 0   # nothing changed: one read, nothing compiled
        seeded = catalog.seed_content(KEY)
        v2 = await a.put_draft(KEY, {"subject": "A second subject", "body": seeded.body, "text": seeded.text,
                                     "topic": "career_paths", "format": "guide"})
        await a.publish(KEY, v2)
        assert (live_version(a), live_version(b)) == (v2, 1)  # b has not looked yet
        assert await b.refresh() == 1
        live = b.live(KEY)
        assert live is not None and live.version == v2 and live.content.subject == "A second subject"
        assert b.named(KEY, v2) == ("career_paths", "guide")   # what its sends' events carry
        # A template made and published at one replica only: the other sends it too.
        new = "skilled_professional.extra_guide"
        v1 = await a.put_draft(new, {"subject": "Extra", "body": seeded.body, "text": seeded.text})
        await a.publish(new, v1)
        assert b.live(new) is None
        # A rollback at a: b goes back too.
        await a.publish(KEY, 1)
        assert await b.refresh() == 2
        theirs, ours = a.live(KEY), b.live(KEY)
        assert b.live(new) is not None and ours is not None and theirs is not None and ours.version == 1
        assert b.keys() == a.keys()
        assert dataclasses.asdict(ours.content) == dataclasses.asdict(theirs.content)
    finally:
        redis.close()
        db.close()


async def test_two_messaging_servers_one_publishes_the_other_renders_it_after_settle(settings: Settings) -> None:
    """The same through two real messaging servers: the other replica's live version (a preview of
    version 0 renders from it, as a send does) is the new one once it settled (virtual clock)."""
    first = await start_service("messaging", settings.with_overrides(replica="a"))
    second = await start_service("messaging", settings.with_overrides(replica="b"))
    ch_a, ch_b = mesh_channel(first.address), mesh_channel(second.address)
    try:
        a, b = messaging_pb2_grpc.MessagingStub(ch_a), messaging_pb2_grpc.MessagingStub(ch_b)
        seeded = Catalog().seed_content(KEY)
        put = await a.PutTemplate(messaging_pb2.PutTemplateRequest(key=KEY, content=messaging_pb2.TemplateContent(
            subject="Published at replica a", body=seeded.body, text=seeded.text)), timeout=10)
        await a.PublishTemplate(messaging_pb2.PublishTemplateRequest(key=KEY, version=put.version), timeout=10)

        async def live_subject(stub: messaging_pb2_grpc.MessagingStub) -> str:
            reply = await stub.PreviewTemplate(messaging_pb2.PreviewTemplateRequest(key=KEY), timeout=10)
            return str(reply.subject)

        assert await live_subject(a) == "Published at replica a"
        await common_pb2_grpc.AdminStub(ch_b).Settle(common_pb2.SettleRequest(), timeout=30)
        assert await live_subject(b) == "Published at replica a"
    finally:
        await ch_a.close()
        await ch_b.close()
        await first.stop(grace=0.5)
        await second.stop(grace=0.5)


async def test_a_segments_copy_published_at_one_replica_is_what_the_other_renders_after_its_refresh(
        settings: Settings) -> None:
    """Segments' copy travels with the templates: the other replica's refresh takes it."""
    db = open_database(settings, service="messaging", migrations_dir=MIGRATIONS)
    redis = connect_sync(settings)
    try:
        catalog = Catalog()
        a = TemplateLibrary(db=db, catalog=catalog, clock=VirtualClock(redis))
        b = TemplateLibrary(db=db, catalog=catalog, clock=VirtualClock(redis))
        await a.ensure()
        await b.ensure()
        lead = {"id": "s-1", "first_name": "Priya", "segment": "student"}
        assert "Wherever you are in your research" in (await b.preview(KEY, 0, lead, {})).text
        v1 = await a.segments.put_draft("student", {"label": "Student", "intro": "Study first, {{ first_name }}."})
        await a.segments.publish("student", v1)
        assert "Study first, Priya." in (await a.preview(KEY, 0, lead, {})).text
        await b.refresh()
        assert "Study first, Priya." in (await b.preview(KEY, 0, lead, {})).text
    finally:
        redis.close()
        db.close()
