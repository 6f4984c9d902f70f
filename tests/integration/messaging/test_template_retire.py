"""An upgrade that renamed catalog keys: the untouched seeded copies of the old keys leave the store at the
next start, what people made or edited stays, and a message still queued under an old key keeps it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert

from nurture.clock import VirtualClock
from nurture.db import open_database
from nurture.redisconn import connect_sync
from nurture.settings import Settings
from services.messaging.app.templates import TemplateLibrary
from services.messaging.domain.catalog import Catalog
from services.messaging.tables import messages
from services.messaging.template_store import TemplateStore

pytestmark = pytest.mark.anyio

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "messaging" / "migrations"
# The keys re-engagement's check-ins had before they became re_engagement.email_01_<...> (commit 585f614).
OLD_KEYS = ["skilled_professional.reengagement", "family.reengagement", "entrepreneur.reengagement",
            "triggers.abandoned_assessment", "triggers.initial_then_inactive"]


async def test_seeded_templates_the_catalog_renamed_are_retired_at_start(settings: Settings) -> None:
    db = open_database(settings, service="messaging", migrations_dir=MIGRATIONS)
    redis = connect_sync(settings)
    try:
        now = datetime(2026, 1, 1, 9, tzinfo=UTC)
        catalog = Catalog()
        store = TemplateStore(db.session)
        # The store as an earlier catalog seeded it: the old keys beside a current one.
        current = "re_engagement.email_01_family"
        seeded = store.seed([(k, catalog.seed_content(current)) for k in [*OLD_KEYS, current]], now)
        assert sorted(seeded) == sorted([*OLD_KEYS, current])
        # Someone edited one old key in the console: theirs to keep.
        store.put_draft("family.reengagement", catalog.seed_content(current), now)
        # A message queued before the upgrade still names another: it renders at its send.
        with db.session() as s:
            s.execute(insert(messages).values(
                id="m-queued", dedupe_key="l-1:triggers:1:abandoned_assessment:1.1", lead_id="l-1",
                journey="triggers", journey_version=1, step="abandoned_assessment", channel="email",
                template="triggers.abandoned_assessment", category="nurture", status="scheduled",
                due_at=now.replace(tzinfo=None), created_at=now.replace(tzinfo=None),
                updated_at=now.replace(tzinfo=None)))

        library = TemplateLibrary(db=db, catalog=catalog, clock=VirtualClock(redis))
        await library.ensure()
        listed = {row.key for row, _ in await library.list()}
        assert listed >= set(catalog.specs), "every catalog template is listed"
        assert listed - set(catalog.specs) == {"family.reengagement", "triggers.abandoned_assessment"}
        assert store.versions("skilled_professional.reengagement") == []
        assert store.versions("triggers.initial_then_inactive") == []
        assert [v.source for v in store.versions("family.reengagement")] == ["seed", "api"]

        # Once the queued message went, the next start retires that one too; the edited one stays.
        with db.session() as s:
            s.execute(messages.update().where(messages.c.id == "m-queued").values(status="sent"))
        again = TemplateLibrary(db=db, catalog=catalog, clock=VirtualClock(redis))
        await again.ensure()
        assert {row.key for row, _ in await again.list()} - set(catalog.specs) == {"family.reengagement"}
    finally:
        db.close()
        redis.close()
