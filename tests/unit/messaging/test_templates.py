"""Every template of the playbook renders, for every segment and for a sparse profile."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from services.messaging.domain.catalog import TEMPLATES_DIR, Catalog, RenderError, choose_variant

PLAYBOOK = Path(__file__).resolve().parents[3] / "services" / "journeys" / "data" / "playbook"

LEADS = {
    "skilled": {"id": "l-s", "first_name": "Ana", "segment": "skilled_professional", "timezone": "Asia/Kolkata",
                "attributes": {"profession": "software engineer", "countries_of_interest": ["CA", "DE"]}},
    "family": {"id": "l-f", "first_name": "Omar", "segment": "family", "timezone": "Africa/Lagos",
               "attributes": {"children": 2, "countries_of_interest": ["AU"]}},
    "entrepreneur": {"id": "l-e", "first_name": "Mei", "segment": "entrepreneur", "timezone": "Asia/Singapore",
                     "attributes": {"business_sector": "fintech"}},
    "sparse": {"id": "l-x"},
}
CONTEXT = {"starts_at": "2026-02-01T16:00:00Z", "ends_at": "2026-02-14T00:00:00Z", "webinar_title": "Canada 101",
           "resource_title": "Global Skills Demand Report", "assessment_score": 71, "plan": "Pro"}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog()


def playbook_send_keys() -> list[str]:
    keys = []
    for path in sorted(PLAYBOOK.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if not isinstance(doc, dict) or "steps" not in doc:
            continue
        for step in doc["steps"]:
            if step.get("type") == "send":
                keys.append(step.get("template") or f"{doc['key']}.{step['id']}")
    return keys


def test_every_playbook_send_step_has_a_template(catalog: Catalog) -> None:
    missing = [k for k in playbook_send_keys() if k not in catalog.specs]
    assert missing == []
    # The seed's 17 emails for each segment workflow.
    for segment in ("skilled_professional", "family", "entrepreneur"):
        assert all(f"{segment}.email_{i:02d}" in catalog.specs for i in range(1, 18))


@pytest.mark.parametrize("who", sorted(LEADS))
def test_every_template_renders(catalog: Catalog, who: str) -> None:
    lead = LEADS[who]
    for key, spec in catalog.specs.items():
        for variant in [""] + sorted(spec.variants):
            r = catalog.render(key, lead, context=CONTEXT, track=lambda url, i: f"https://t.example/c/{i}",
                               unsubscribe_url="https://t.example/u/x", pixel_url="https://t.example/o/x",
                               variant=variant)
            assert r.subject and "{{" not in r.subject
            assert spec.cta_label in r.text and "https://t.example/c/0" in r.text
            assert "https://t.example/u/x" in r.text and 'href="https://t.example/u/x"' in r.html
            assert f"Hi {lead.get('first_name', 'there')}," in r.text
            assert r.links[0].startswith("https://")


def test_personalisation_by_segment(catalog: Catalog) -> None:
    skilled = catalog.render("skilled_professional.email_03", LEADS["skilled"])
    assert "software engineer" in skilled.text and "Canada and Germany" in skilled.text
    family = catalog.render("family.email_04", LEADS["family"])
    assert "two children" in family.text and "Australia" in family.text and "2 children" not in family.text
    one = catalog.render("family.email_04", {**LEADS["family"], "attributes": {"children": 1}})
    assert "Moving with one child" in one.text and "what your child knows today" in one.text
    biz = catalog.render("entrepreneur.email_02", LEADS["entrepreneur"])
    assert "fintech" in biz.text
    webinar = catalog.render("webinar.email_03", LEADS["family"], context=CONTEXT)
    assert "Canada 101" in webinar.text and "17:00" in webinar.text  # Lagos is UTC+1


def test_html_is_escaped_and_sandboxed(catalog: Catalog) -> None:
    lead = {"id": "x", "first_name": "<script>alert(1)</script>", "segment": "family"}
    r = catalog.render("family.email_01", lead)
    assert "<script>" not in r.html and "&lt;script&gt;" in r.html


def test_unknown_and_broken_templates_raise_render_error(catalog: Catalog, tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="unknown template"):
        catalog.render("nope.email_01", {"id": "x"})
    data = yaml.safe_load((TEMPLATES_DIR / "catalog.yaml").read_text())
    data["templates"]["family.email_01"]["subject"] = "{{ ctx.__class__.__mro__ }}"
    data["templates"]["family.email_02"]["subject"] = "{{ no_such_variable }}"
    broken = tmp_path / "catalog.yaml"
    broken.write_text(yaml.safe_dump(data))
    bad = Catalog(broken)
    for key in ("family.email_01", "family.email_02"):
        with pytest.raises(RenderError):
            bad.render(key, {"id": "x"}, variant="a")


def test_variant_split_is_stable_and_roughly_even(catalog: Catalog) -> None:
    spec = catalog.specs["skilled_professional.email_01"]
    picks = [choose_variant(spec, f"lead-{i}") for i in range(2000)]
    assert picks == [choose_variant(spec, f"lead-{i}") for i in range(2000)]
    assert 900 < picks.count("a") < 1100


def test_plain_text_strings_render_exactly_as_jinja_would(catalog: Catalog) -> None:
    """The constant fast path for strings without template syntax gives Jinja2's own output."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    jinja = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    sources = {p for spec in catalog.specs.values() for p in spec.points} | {
        spec.subject for spec in catalog.specs.values()} | {
        "", "plain", "ends with a newline\n", "two newlines\n\n", "  spaced  ", "a } brace", "windows\r\nline"}
    constant = 0
    for source in sorted(sources):
        compiled = catalog._compile(source)
        if "{" in source:                                  # template syntax: always Jinja2
            assert type(compiled).__name__ != "_Constant", source
            continue
        constant += type(compiled).__name__ == "_Constant"
        assert compiled.render({}) == jinja.from_string(source).render({}), source
    plain = [s for s in sources if "{" not in s]
    assert constant >= len(plain) - 4                      # the fast path is taken for plain strings
    with pytest.raises(Exception, match="missing"):
        catalog._compile("{{ missing }}").render({})


def test_subjects_read_well_without_a_first_name(catalog: Catalog) -> None:
    # "Hi there" is a greeting; "there, your skills could..." in a subject is not.
    for key in catalog.specs:
        for variant in [*catalog.specs[key].variants] or [None]:
            anon = catalog.render(key, LEADS["sparse"], context=CONTEXT, variant=variant).subject
            named = catalog.render(key, {**LEADS["sparse"], "first_name": "Ana"}, context=CONTEXT,
                                   variant=variant).subject
            assert "there" not in anon.lower().replace("halfway there", ""), (key, variant, anon)
            assert not anon.startswith((",", " ")) and anon[:1] == anon[:1].upper(), (key, variant, anon)
            if "Ana" in named:
                assert named.replace("Ana, ", "").replace(", Ana", "")[:1].strip(), (key, variant, named)


def test_webinar_and_trial_times_read_in_the_right_tense(catalog: Catalog) -> None:
    # Rendered at send time: the missed-you email comes after the webinar, the post-trial follow-up
    # after the trial; neither may say the webinar "starts" or the trial "runs until".
    lead = LEADS["skilled"]
    before, after = datetime(2026, 2, 1, 12, 0, tzinfo=UTC), datetime(2026, 2, 1, 17, 0, tzinfo=UTC)
    reminder = catalog.render("webinar.email_03", lead, context=CONTEXT, now=before).text
    missed = catalog.render("webinar.email_05", lead, context=CONTEXT, now=after).text
    assert "It starts Sun 01 Feb 2026, 21:30 your time." in reminder
    assert "It took place Sun 01 Feb 2026, 21:30 your time." in missed and "It starts" not in missed
    during = catalog.render("trial_onboarding.email_05", lead, context=CONTEXT, now=before).text
    ended = catalog.render("trial_onboarding.email_09", lead, context=CONTEXT,
                           now=datetime(2026, 2, 15, tzinfo=UTC)).text
    assert "Your free trial runs until" in during
    assert "Your free trial ended Sat 14 Feb 2026, 05:30." in ended and "runs until" not in ended


def test_the_final_webinar_reminder_links_to_the_webinars_own_access_link(catalog: Catalog) -> None:
    ctx = {**CONTEXT, "join_url": "https://zoom.example/j/123"}
    before = datetime(2026, 2, 1, 14, 0, tzinfo=UTC)
    final = catalog.render("webinar.email_03", LEADS["family"], context=ctx, now=before)
    assert final.links == ("https://zoom.example/j/123",)
    assert "Webinar: Canada 101." in final.text and "Your access link is in the button below." in final.text
    # The calendar email keeps its own page, and says nothing about an access link.
    confirmation = catalog.render("webinar.email_01", LEADS["family"], context=ctx, now=before)
    assert confirmation.links[0].startswith("https://www.borderbridge.example/webinars/calendar?")
    own = catalog.render("webinar.email_01", LEADS["family"], context={**ctx, "webinar_id": "w-1"}, now=before)
    assert own.links[0].startswith("https://www.borderbridge.example/webinars/w-1/calendar?")
    assert "access link" not in confirmation.text
    unsafe = catalog.render("webinar.email_03", LEADS["family"], context={**ctx, "join_url": "javascript:alert(1)"})
    assert unsafe.links[0].startswith("https://www.borderbridge.example/webinars/join?")
