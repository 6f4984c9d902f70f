"""A `nurture simulate` run (the journeys engine over the real playbook, in virtual time) heard by the
read model reads the same as a brute-force recount of the messages the run produced."""

from __future__ import annotations

import random
from typing import Any

from nurture.busmessage import BusMessage
from nurture.db import open_database
from nurture.settings import Settings
from services.analytics import storage
from services.analytics.domain import reports
from services.analytics.domain.facts import from_bus
from services.analytics.server import MIGRATIONS
from services.journeys.domain.definitions import load_playbook
from services.journeys.simulation import Simulation
from tests.integration.analytics import history as h


def simulated_messages(leads: int, days: int) -> list[dict[str, Any]]:
    """Every bus message the simulation handed its engine, as it handed them."""
    sim = Simulation(load_playbook(), seed=5)
    heard: list[dict[str, Any]] = []
    on_message = sim.engine.on_message

    def record(state: Any, message: BusMessage, now: Any) -> Any:
        if message.occurred_at:  # bus messages; the engine's own due-time nudges carry no time
            heard.append(message.as_dict())
        return on_message(state, message, now)

    sim.engine.on_message = record  # type: ignore[method-assign,assignment]
    sim.run(leads, days)
    return heard


def test_a_simulated_run_reads_the_same_as_its_recount(settings: Settings) -> None:
    stream = simulated_messages(60, 30)
    rnd = random.Random(3)
    stream = stream + rnd.sample(stream, len(stream) // 10)  # some heard twice
    db = open_database(settings, service="analytics", migrations_dir=MIGRATIONS)
    try:
        for i in range(0, len(stream), 97):
            with db.session() as s:
                storage.record(s, [f for m in stream[i:i + 97] if (f := from_bus(m)) is not None])
        days = sorted({h.at_of(m).date() for m in stream})
        r = h.Range(days[0], days[-1])
        q = storage.Query(r.start, r.end)
        with db.session() as s:
            for group in reports.ENGAGEMENT_GROUPS:
                assert storage.engagement_report(s, q, group) == h.engagement(stream, r, group), group
            for metric in ("sent", "opened", "clicked"):
                assert storage.timeseries_report(s, q, metric, "day") == h.timeseries(stream, r, metric, "day")
            rows = storage.engagement_report(s, q, "journey")
        assert sum(row["sent"] for row in rows) > 50 and sum(row["opened"] for row in rows) > 0
    finally:
        db.close()
