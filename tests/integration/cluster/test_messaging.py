"""Messaging's Redis on the cluster: per-lead caps (one key per lead, `nurture:lead:{<id>}:msg:nurture`) and
a sending domain's warm-up count (`warmup:{<domain>}:...`), both Lua scripts run for a whole batch in one
pipelined round per node (nurture.redisconn.run_script). The single-Redis tests of these promises run
again here with the `settings` fixture on the 3-master cluster, whose nodes start without the scripts;
and one batch holds leads on every node."""

from __future__ import annotations

from datetime import timedelta

import pytest
from redis.cluster import key_slot

from cli.rediscluster import slot_ranges
from nurture.redisconn import lead_key
from nurture.settings import Settings
from tests.integration.messaging.conftest import InProc
from tests.integration.messaging.conftest import inproc as inproc  # the fixture, on this module's settings
from tests.integration.messaging.harness import make_lead
from tests.integration.messaging.test_deliverability_guards import (  # noqa: F401
    test_a_warming_domain_sends_its_days_limit_and_holds_the_rest_until_tomorrow,
    warming,
)
from tests.integration.messaging.test_promises import (  # noqa: F401
    test_the_weekly_cap_holds_the_eleventh_nurture_email_until_the_first_is_a_week_old,
)

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


@pytest.fixture
def settings(cluster_settings: Settings) -> Settings:
    return cluster_settings


def node_of(key: str) -> int:
    slot = key_slot(key.encode())
    return next(i for i, (first, last) in enumerate(slot_ranges(3)) if first <= slot <= last)


async def test_one_batch_of_sends_holds_the_caps_of_leads_on_every_node(inproc: InProc) -> None:  # noqa: F811
    by_node: dict[int, str] = {}
    i = 0
    while len(by_node) < 3:
        by_node.setdefault(node_of(lead_key(f"cap-{i}", "msg:nurture")), f"cap-{i}")
        i += 1
    leads = sorted(by_node.values())
    for lead in leads:
        inproc.scoring.add(make_lead(lead, timezone="UTC"))
    t0 = inproc.clock.now().replace(hour=9, minute=0, second=0, microsecond=0) + timedelta(days=1)
    inproc.clock.set(t0)
    for lead in leads:  # two nurture emails each, due at once: one goes, the other waits for the 2 h gap
        await inproc.send(lead, "family.email_01")
        await inproc.send(lead, "family.email_02")
    await inproc.settle()
    for lead in leads:
        rows = list((await inproc.messages(lead)).values())
        assert sorted(r.status for r in rows) == ["scheduled", "sent"]
        held = next(r for r in rows if r.status == "scheduled")
        assert held.reason == "deferred: minimum gap after the previous nurture email"
        assert held.due_at.replace(tzinfo=t0.tzinfo) == t0 + timedelta(hours=2)
    inproc.clock.set(t0 + timedelta(hours=2))
    await inproc.settle()
    for lead in leads:
        assert {r.status for r in (await inproc.messages(lead)).values()} == {"sent"}
        assert inproc.mails_to(f"{lead}@example.com") == 2
