"""The playbook across services: every template a journey sends exists in messaging's catalog and
renders, and the segment workflows carry the seed's 17 emails each."""

from __future__ import annotations

from services.journeys.domain.definitions import load_playbook, validate
from services.messaging.domain.catalog import Catalog


def test_every_journey_template_exists_and_every_definition_validates() -> None:
    journeys = load_playbook()
    catalog = Catalog()
    keys = catalog.keys()
    problems = [f"{key}: {p}" for key, j in journeys.items()
                for p in validate(j, journeys=journeys.keys(), templates=keys)]
    assert problems == []


def test_every_template_is_listed_under_the_one_journey_that_sends_it() -> None:
    """Messaging lists a template, and gives it its topic, campaign and journey paragraph, under the journey
    its key names. The re-engagement check-ins moved into the `re_engagement` journey but kept segment
    keys (`skilled_professional.reengagement`), so the templates listing showed them under a segment
    journey that never sends them."""
    journeys = load_playbook()
    catalog = Catalog()
    senders: dict[str, set[str]] = {}
    for key, j in journeys.items():
        for template in j.templates():
            senders.setdefault(template, set()).add(key)
    misplaced = {t: sorted(by) for t, by in senders.items() if {catalog.spec(t).journey} != by}
    assert misplaced == {}
    # What the listing shows for the check-ins: their journey, its topic and its stage.
    spec = catalog.spec("re_engagement.email_01_family")
    assert (spec.journey, spec.topic, spec.stage) == ("re_engagement", "reengagement", "check_in")


def test_segment_workflows_have_seventeen_emails_over_sixty_days() -> None:
    journeys = load_playbook()
    for key in ("skilled_professional", "family", "entrepreneur"):
        emails = [s for s in journeys[key].steps.values() if s.type == "send" and s.id.startswith("email_")]
        assert len(emails) == 17, key


def test_every_journey_email_renders_for_a_sparse_profile() -> None:
    journeys = load_playbook()
    catalog = Catalog()
    lead = {"id": "x", "email": "x@example.com", "attributes": {}, "segment": None}
    keys = set(catalog.keys())
    rendered = 0
    for j in journeys.values():
        for key in j.templates():
            assert key in keys, key
            r = catalog.render(key, lead)
            rendered += 1
            for part in (r.subject, r.text, r.html):
                # Something to read, and no hole where a missing profile value would go.
                assert part.strip(), key
                assert "None" not in part and "{{" not in part and "Undefined" not in part, (key, part)
            assert "Hi ," not in r.text and "Hi  " not in r.text, key
    assert rendered >= 100


def test_the_seeds_interest_branches_hear_a_click_on_the_email_about_that_interest() -> None:
    """Each segment's "if engaging with <interest> content" branch listens to email_clicked with
    `category`; the email about that interest carries it (catalog `interest`, put on its clicks by
    messaging). This run's find: no email carried one, so no email click fired a branch."""
    journeys = load_playbook()
    catalog = Catalog()
    heard: dict[tuple[str, str], str] = {}
    for key in ("skilled_professional", "family", "entrepreneur"):
        for rule in journeys[key].triggers:
            when = rule.when
            if "email_clicked" in rule.events and when.get("fact") == "event.properties.category":
                heard[(key, str(when.get("eq")))] = rule.name
    carried = {(spec.journey, spec.interest): k for k, spec in catalog.specs.items() if spec.interest}
    # Every interest an email carries fires its journey's branch, and these branches have their email.
    assert set(carried) <= set(heard), sorted(set(carried) - set(heard))
    assert {("family", "education"), ("family", "healthcare"), ("entrepreneur", "investment"),
            ("entrepreneur", "funding"), ("entrepreneur", "fast_track"),
            ("skilled_professional", "credentials")} <= set(carried)
