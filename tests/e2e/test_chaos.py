"""The chaos run (bench/chaos.py) at a small size: 2 replicas of every service on PostgreSQL, a Redis Cluster of
3 masters with a replica each, leads posting events while virtual time moves their journeys' timed steps
along, seeded random service replicas SIGKILLed at random moments and one Redis master failed over
(`CLUSTER FAILOVER`, the graceful kind). Read back from the record: no accepted event lost by the record
or by any consumer, no duplicate send, no lost timer, each lead's events folded in the order posted."""

from __future__ import annotations

import pytest

from bench.chaos import chaos_run
from tests.conftest import PG_URL

SEED = 7


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(1500)  # 17 processes and 6 Redis nodes started on a loaded shared machine, then settled
@pytest.mark.skipif(not PG_URL, reason="replicas share a PostgreSQL database (NURTURE_TEST_DATABASE_URL)")
def test_random_kills_and_a_redis_failover_lose_nothing_and_send_nothing_twice() -> None:
    assert PG_URL
    counts = chaos_run(PG_URL, seed=SEED, leads=12, events=4, kills=6, failover="graceful")
    assert counts["kills"] >= 3, counts  # the run did kill (a pick landing on a restarting replica is skipped)
    assert counts["failover"].startswith("graceful: master"), counts
    assert counts["accepted"] > 0 and counts["sent_messages"] > 0, counts
    assert counts["lost_from_record"] == 0, counts
    assert counts["lost_per_consumer"] == {"journeys": 0, "messaging": 0, "analytics": 0, "crm_sync": 0}, counts
    assert counts["duplicate_sends"] == 0 and counts["missing_mail"] == 0, counts
    assert counts["lost_timers"] == 0, counts
    assert counts["leads_out_of_order"] == 0 and counts["missing_on_bus"] == 0, counts
