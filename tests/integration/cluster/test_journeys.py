"""The journeys service on the 3-master Redis Cluster: its timers (16 shards over the nodes, claimed by a
script per shard), its bus consumer (a read per stream) and the virtual clock, through the service tests
of tests/integration/journeys run again with the `settings` fixture on the cluster: a journey run on
timers with the urgent jump, messaging down (retried, not lost nor doubled), inactivity pausing a segment
journey and erasure; and with the real clock, the running consumer (a blocking read per stream) and
the timer loop on their own."""

from __future__ import annotations

import pytest

from nurture.settings import Settings
from tests.integration.journeys.conftest import mesh as mesh  # the fixture, on this module's settings
from tests.integration.journeys.test_journeys_service import (  # noqa: F401
    test_inactivity_re_engages_pausing_the_segment_then_erasure_removes_everything,
    test_messaging_down_means_retry_later_not_lost_nor_doubled,
    test_segment_journey_runs_on_timers_and_explains_the_urgent_jump,
)
from tests.integration.journeys.test_real_clock import test_real_clock_runs_steps_without_settle  # noqa: F401

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


@pytest.fixture
def settings(cluster_settings: Settings) -> Settings:
    return cluster_settings
