"""What the website is told to show a lead (Channels.personalization), with journeys' answer faked."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from services.messaging.catalog import Catalog
from services.messaging.channels import Channels

LEAD = {"id": "l-1", "segment": "skilled_professional", "lifecycle_stage": "mql", "attributes": {}}


class Leads:
    async def get(self, lead_id: str) -> dict[str, Any] | None:
        return LEAD if lead_id == "l-1" else None


def personalization(enrollments: list[SimpleNamespace]) -> Any:
    channels = Channels(SimpleNamespace(leads=Leads(), catalog=Catalog()), None)  # type: ignore[arg-type]

    async def answer(_lead_id: str) -> list[Any]:
        return list(enrollments)

    channels.enrollments = answer  # type: ignore[method-assign]
    return asyncio.run(channels.personalization("l-1"))


def test_the_always_on_trigger_tables_do_not_hide_segment_content() -> None:
    # The segment journey is over; only the trigger tables listen: the lead still gets its segment's
    # content for its lifecycle stage, not the "no journey yet" fallback.
    p = personalization([SimpleNamespace(journey="triggers", stage="listening", status="active"),
                         SimpleNamespace(journey="skilled_professional", stage="decision", status="completed")])
    assert p.recommended_content, p
    assert {r["key"].split(".")[0] for r in p.recommended_content} == {"skilled_professional"}
    assert all(r["reason"] == "segment and lifecycle stage: skilled_professional/solution"
               for r in p.recommended_content)


def test_current_journey_stages_come_first_and_at_most_three() -> None:
    p = personalization([SimpleNamespace(journey="triggers", stage="listening", status="active"),
                         SimpleNamespace(journey="skilled_professional", stage="education", status="active")])
    assert len(p.recommended_content) == 3
    assert all(r["reason"] == "current journey stage: skilled_professional/education" for r in p.recommended_content)
