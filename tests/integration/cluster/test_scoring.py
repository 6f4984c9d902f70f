"""Scoring's outbox on the 3-master Redis Cluster: what ingest and lead writes commit reaches the bus's
streams (spread over the nodes, one non-transactional pipeline per publish) once each, in commit order per
lead: the service tests of tests/integration/scoring/test_outbox.py run again with the `settings` fixture
on the cluster."""

from __future__ import annotations

import pytest

from nurture.settings import Settings
from tests.integration.scoring.test_outbox import (  # noqa: F401 (fixtures and tests, on this module's settings)
    outbox_rows,
    stub,
    test_ingest_publishes_each_message_once_in_order_and_the_outbox_empties,
    test_lead_writes_and_events_of_a_lead_reach_the_bus_in_commit_order,
    test_the_quiet_second_empties_the_outbox_without_another_ingest,
)

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


@pytest.fixture
def settings(cluster_settings: Settings) -> Settings:
    return cluster_settings
