"""A seeded template's button says `{{ cta_label }}`: the catalog's `cta.label` is the field's default, so
a version that names its own label changes the button of every seeded email (the body carried the label as
text, and the field changed nothing there). With the default, every seeded email reads as it did with the
label written in: the same subject, preheader, text and links, and the same HTML but for the label's
escaping (Jinja2's autoescape writes an apostrophe as &#39;, which reads the same)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from markupsafe import escape

from services.messaging.domain.catalog import Catalog
from services.messaging.domain.content import Compiled, escape_outside_jinja

LEADS = (
    {"id": "l-f", "first_name": "Omar", "segment": "family", "timezone": "Africa/Lagos",
     "attributes": {"children": 2, "countries_of_interest": ["AU"], "sales_owner": "ana.costa@borderbridge.example"}},
    {"id": "l-e", "first_name": "Mei", "segment": "entrepreneur", "attributes": {"business_sector": "fintech"}},
    {"id": "l-x"},
)
CONTEXT = {"starts_at": "2026-02-01T16:00:00Z", "ends_at": "2026-02-14T00:00:00Z", "webinar_title": "Canada 101",
           "plan": "Family Plus", "join_url": "https://zoom.example/j/1", "assessment_score": 71}
NOW = datetime(2026, 1, 20, tzinfo=UTC)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog()


def render(catalog: Catalog, key: str, compiled: Compiled, lead: dict[str, object], variant: str) -> tuple[str, ...]:
    r = catalog.render(key, lead, context=CONTEXT, content=compiled, variant=variant, now=NOW,
                       track=lambda url, i: f"https://t.example/c/{i}", pixel_url="https://t.example/o/x",
                       unsubscribe_url="https://t.example/u/x")
    return r.subject, r.preheader, r.html, r.text, "|".join(r.links)


def test_seeded_emails_read_as_with_the_label_written_in(catalog: Catalog) -> None:
    for key, spec in catalog.specs.items():
        seeded = catalog.seed_content(key)
        assert "{{ cta_label }}" in seeded.body and "{{ cta_label }}" in seeded.text, key
        assert seeded.cta_label == "", key   # the field's default: the catalog's label
        # The label written in, as the seed did before.
        written = dataclasses.replace(
            seeded, body=seeded.body.replace("{{ cta_label }}", escape_outside_jinja(spec.cta_label)),
            text=seeded.text.replace("{{ cta_label }}", spec.cta_label))
        for lead in LEADS:
            for variant in ["", *sorted(spec.variants)]:
                now = render(catalog, key, Compiled(key, 1, seeded), lead, variant)
                before = render(catalog, key, Compiled(key, 1, written), lead, variant)
                label_before = f">{escape_outside_jinja(spec.cta_label)}</a>"
                assert before[2].count(label_before) == 1, key
                assert now[2] == before[2].replace(label_before, f">{escape(spec.cta_label)}</a>"), (key, lead)
                assert (now[0], now[1], now[3], now[4]) == (before[0], before[1], before[3], before[4]), (key, lead)


def test_a_versions_label_changes_the_button_of_every_seeded_email(catalog: Catalog) -> None:
    for key in catalog.specs:
        seeded = catalog.seed_content(key)
        edited = Compiled(key, 2, dataclasses.replace(seeded, cta_label="Talk to us today"))
        _subject, _pre, html, text, _links = render(catalog, key, edited, LEADS[0], "")
        assert ">Talk to us today</a>" in html and "\nTalk to us today: https://" in text, key
