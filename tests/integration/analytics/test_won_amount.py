"""A won deal whose amount the CRM corrects (500, then 700) is counted at its amount now in every report
that adds revenue, still as one conversion: crm_sync's `opportunity_amount_changed` names the win's event
and analytics sets that win's amount (a correction stayed 500 in revenue, ROI and attribution)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from nurture.db import open_database
from nurture.settings import Settings
from services.analytics import storage
from services.analytics.app.core import load_costs
from services.analytics.domain.facts import from_bus
from services.analytics.server import MIGRATIONS

LEAD = {"id": "L1", "segment": "family", "score": 10, "created_at": "2026-03-01T00:00:00Z"}
EMAIL = {"journey": "welcome", "stage": "welcome", "topic": "schools", "format": "guide", "channel": "email"}


def message(id_: str, etype: str, at: str, props: dict[str, Any], lead_id: str = "L1") -> dict[str, Any]:
    return {"id": id_, "lead_id": lead_id, "type": etype, "properties": props, "occurred_at": at,
            "lead": {**LEAD, "id": lead_id}}


def history(split: bool) -> list[list[dict[str, Any]]]:
    """The lead's messages and clicks, its win at 500, then the corrections (700, then 650 in EUR as
    crm_sync converts it), and another lead's event naming this win: in one batch or one by one."""
    stream = [
        message(f"s{i}", "email_sent", f"2026-03-0{i}T08:00:00Z", {**EMAIL, "message_id": f"m{i}",
                                                                  "template": f"welcome.email_0{i}"})
        for i in (2, 3, 4)
    ] + [
        message(f"c{i}", "email_clicked", f"2026-03-0{i}T09:00:00Z", {**EMAIL, "message_id": f"m{i}",
                                                                     "template": f"welcome.email_0{i}"})
        for i in (2, 3, 4)
    ] + [
        message("won-1", "opportunity_won", "2026-03-05T10:00:00Z",
                {"deal_id": "d1", "amount": 500, "currency": "USD", "revenue": 500, "revenue_currency": "USD"}),
        message("amt-1", "opportunity_amount_changed", "2026-03-06T10:00:00Z",
                {"deal_id": "d1", "amount": 700, "currency": "USD", "revenue": 700, "won_event_id": "won-1"}),
        message("amt-2", "opportunity_amount_changed", "2026-03-07T10:00:00Z",
                {"deal_id": "d1", "amount": 600, "currency": "EUR", "revenue": 648.0, "won_event_id": "won-1"}),
        message("amt-x", "opportunity_amount_changed", "2026-03-07T11:00:00Z",
                {"deal_id": "d9", "revenue": 1e6, "won_event_id": "won-1"}, lead_id="L2"),
    ]
    return [[m] for m in stream] if split else [stream]


def revenue_everywhere(settings: Settings, batches: list[list[dict[str, Any]]]) -> dict[str, Any]:
    db = open_database(settings, service="analytics", migrations_dir=MIGRATIONS)
    try:
        for batch in batches:
            with db.session() as s:
                storage.record(s, [f for m in batch if (f := from_bus(m)) is not None])
        figures: list[dict[str, Any]] = []
        for rebuilt in (False, True):
            with db.session() as s:
                if rebuilt:
                    storage.rebuild(s)
                q = storage.Query(date(2026, 3, 1), date(2026, 3, 31))
                attribution = storage.attribution_report(s, q, "linear", 30)
                roi = storage.roi_report(s, q, load_costs())
                sequences = storage.sequences_report(s, q, 2, "template", 30)
                figures.append({
                    "timeseries": storage.timeseries_report(s, q, "revenue", "day"),
                    "attribution": (attribution["conversions"], attribution["revenue"]),
                    "roi": (roi["influenced_revenue"], [(p["deals"], p["revenue"]) for p in roi["by_path"]]),
                    "sequences": sorted((r["conversions"], r["revenue"]) for r in sequences["rows"]),
                })
        assert figures[0] == figures[1]  # a rebuild from the facts record reads the same
        return figures[0]
    finally:
        db.close()


# In one batch (the win amended before it is stored) and one message a batch (the stored win amended).
@pytest.mark.parametrize("split", [False, True])
def test_a_won_deals_corrected_amount_is_its_revenue_in_every_report(settings: Settings, split: bool) -> None:
    got = revenue_everywhere(settings, history(split))
    assert got["timeseries"] == [{"t": "2026-03-05", "value": 648.0}]  # the win's day, at its amount now
    assert got["attribution"] == (1, 648.0)
    assert got["roi"] == (648.0, [(1, 648.0)])
    assert got["sequences"] and all(r == (1, 648.0) for r in got["sequences"])
