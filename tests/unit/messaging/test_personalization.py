"""What the website is told to show a lead (Channels.personalization), with journeys' answer faked."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from services.messaging.app.channels import Channels
from services.messaging.domain.catalog import Catalog

LEAD = {"id": "l-1", "segment": "skilled_professional", "lifecycle_stage": "mql", "attributes": {}}


class Leads:
    def __init__(self, lead: dict[str, Any]) -> None:
        self.lead = lead

    async def get(self, lead_id: str) -> dict[str, Any] | None:
        return self.lead if lead_id == "l-1" else None


def personalization(enrollments: list[SimpleNamespace], lead: dict[str, Any] | None = None) -> Any:
    catalog = Catalog()
    # Segments' copy as the store is seeded with it (the catalog's own).
    segments = SimpleNamespace(live=lambda: catalog.segment_copy)
    channels = Channels(SimpleNamespace(leads=Leads(lead or LEAD), catalog=catalog,  # type: ignore[arg-type]
                                        templates=SimpleNamespace(segments=segments)), None)

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
    assert all(r["reason"] == "lifecycle stage mql: skilled_professional/solution"
               for r in p.recommended_content)


def test_current_journey_stages_come_first_and_at_most_three() -> None:
    p = personalization([SimpleNamespace(journey="triggers", stage="listening", status="active"),
                         SimpleNamespace(journey="skilled_professional", stage="education", status="active")])
    assert len(p.recommended_content) == 3
    assert all(r["reason"] == "current journey stage: skilled_professional/education" for r in p.recommended_content)


ENDED = [SimpleNamespace(journey="skilled_professional", stage="decision", status="completed")]


def test_after_the_journey_a_customer_gets_customer_content_not_the_welcome() -> None:
    p = personalization(ENDED, {**LEAD, "lifecycle_stage": "customer",
                                "interests": {"topics": ["pricing"]}})
    keys = [r["key"] for r in p.recommended_content]
    assert keys and all(k.startswith("customer.") for k in keys), keys
    assert not any("welcome" in r["reason"] or k.endswith("pricing_page") for r, k in
                   zip(p.recommended_content, keys, strict=True))


def test_after_the_journey_what_the_lead_looked_at_last_comes_first() -> None:
    p = personalization(ENDED, {**LEAD, "lifecycle_stage": "sql",
                                "interests": {"topics": ["family", "pricing", "unknown_topic"]}})
    keys = [r["key"] for r in p.recommended_content]
    assert keys[:2] == ["triggers.pricing_page", "triggers.family_content"], keys
    assert p.recommended_content[0]["reason"] == "recently looked at pricing"
    assert keys[2].startswith("skilled_professional.")   # then the lifecycle stage's content


def test_each_lifecycle_stage_has_content_of_its_own() -> None:
    for stage, journey in (("subscriber", "skilled_professional"), ("lead", "skilled_professional"),
                           ("mql", "skilled_professional"), ("sql", "skilled_professional"),
                           ("trial", "trial_nurture"), ("customer", "customer")):
        p = personalization(ENDED, {**LEAD, "lifecycle_stage": stage})
        assert p.recommended_content and all(r["key"].startswith(journey + ".") for r in p.recommended_content), stage


SITE = "https://www.borderbridge.example"
PROFILE = {"attributes": {"countries_of_interest": ["CA"]}, "segment": "family"}


@pytest.mark.parametrize(("lead", "expected"), [
    ({"lifecycle_stage": "customer", "score": 99, **PROFILE},
     {"action": "explore_features", "label": "Explore your roadmap", "url": f"{SITE}/app/roadmap",
      "reason": "customer"}),
    ({"lifecycle_stage": "trial", "score": 99, **PROFILE},
     {"action": "upgrade", "label": "Keep your access", "url": f"{SITE}/pricing", "reason": "in trial"}),
    ({"lifecycle_stage": "lead", "score": 70, **PROFILE},
     {"action": "book_consultation", "label": "Book a consultation", "url": f"{SITE}/consultation",
      "reason": "score 70, stage lead"}),
    ({"lifecycle_stage": "sql", "score": 0, **PROFILE},
     {"action": "book_consultation", "label": "Book a consultation", "url": f"{SITE}/consultation",
      "reason": "score 0, stage sql"}),
    ({"lifecycle_stage": "lead", "score": 69, **PROFILE},
     {"action": "start_assessment", "label": "Start your free assessment", "url": f"{SITE}/assessment",
      "reason": "score 69, stage lead"}),
    ({"lifecycle_stage": "lead", "score": 40, **PROFILE},
     {"action": "start_assessment", "label": "Start your free assessment", "url": f"{SITE}/assessment",
      "reason": "score 40, stage lead"}),
    ({"lifecycle_stage": "mql", "score": 1, **PROFILE},
     {"action": "start_assessment", "label": "Start your free assessment", "url": f"{SITE}/assessment",
      "reason": "score 1, stage mql"}),
    ({"lifecycle_stage": "lead", "score": 39, **PROFILE},
     {"action": "download_guide", "label": "Download the pathway guide", "url": f"{SITE}/guides",
      "reason": "early research"}),
    ({"score": 39, "attributes": {}, "segment": "family"},
     {"action": "complete_profile", "label": "Complete your profile", "url": f"{SITE}/profile",
      "reason": "profile incomplete"}),
    ({"lifecycle_stage": None, "score": None, "attributes": {"countries_of_interest": ["CA"]}, "segment": ""},
     {"action": "complete_profile", "label": "Complete your profile", "url": f"{SITE}/profile",
      "reason": "profile incomplete"}),
])
def test_next_best_action_by_stage_and_score(lead: dict, expected: dict) -> None:
    from services.messaging.app.channels import next_best_action

    assert next_best_action(lead, SITE) == expected


def test_countries_of_interest_come_first_then_those_looked_at_once_each_at_most_five() -> None:
    p = personalization(ENDED, {**LEAD, "attributes": {"countries_of_interest": ["CA", "AU"]},
                                "interests": {"countries": ["AU", "NZ", "UK", "CA", "US", "IE"]}})
    assert p.featured_countries == ["CA", "AU", "NZ", "UK", "US"]
    assert personalization(ENDED, {**LEAD, "interests": {"countries": ["NZ"]}}).featured_countries == ["NZ"]


def test_a_lead_no_journey_or_stage_places_gets_the_free_guides() -> None:
    p = personalization(ENDED, {**LEAD, "lifecycle_stage": "unheard_of"})
    catalog = Catalog()
    guide = catalog.specs["lead_magnet.email_01"]
    assert p.recommended_content == [{"key": "lead_magnet.email_01", "title": "Free immigration guides",
                                      "url": catalog.cta_destination(guide), "reason": "no journey yet"}]
    assert p.recommended_content[0]["url"].startswith("http")
