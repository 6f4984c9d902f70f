"""Copy as paragraphs in the templates architecture: the seed layouts lay each point as a paragraph, a
point that renders to nothing at send time leaves no empty paragraph, YAML folding's whitespace does not
show, the preheader is the first rendered sentence, and stored versions may use the copy's filters and
comparisons in their MJML body."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.messaging.domain.catalog import Catalog
from services.messaging.domain.content import Compiled, TemplateContent, parse, validate
from services.messaging.domain.mjml import compile_mjml
from services.messaging.domain.wording import first_sentence, squash

CATALOG = """\
site_url: https://www.borderbridge.example
sender: {name: BorderBridge, address: hello@borderbridge.example, postal_address: "1 Example Street"}
templates:
  demo.email_01:
    subject: Your plan
    points:
      - "{% if ctx.get('plan') %}You are trying the {{ ctx.get('plan') }} plan. It ends soon.{% endif %}"
      - >-
        Folded copy that YAML
        breaks over lines,   and a score
        {% if ctx.get('score', 0)|int >= 70 %}above{% else %}below{% endif %} 70! Then more.
      - "{% if children > 0 %}You are moving with {{ children_text }}.{% endif %}"
      - As {{ profession | with_article }}, you have options.
    cta: {label: See it, path: "/plans/{{ ctx.get('plan', '') | slug }}"}
"""
LEAD = {"id": "l1", "first_name": "Ana", "attributes": {"profession": "engineer", "children": 1}}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    path: Path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(CATALOG, encoding="utf-8")
    return Catalog(path)


def paragraphs(html: str) -> list[str]:
    return [" ".join(p.split()) for p in re.findall(r"<p\b[^>]*>(.*?)</p>", html, re.S)]


def test_points_are_paragraphs_and_an_empty_one_leaves_nothing(catalog: Catalog) -> None:
    r = catalog.render("demo.email_01", {**LEAD, "attributes": {"profession": "architect"}})
    assert paragraphs(r.html) == [
        "Hi Ana,", "Folded copy that YAML breaks over lines, and a score below 70! Then more.",
        "As an architect, you have options.", "Warm regards,<br>The BorderBridge team"]
    assert not re.search(r"<p\b[^>]*>\s*</p>|<li\b|<ul\b", r.html)
    assert "<strong>Your plan</strong>" not in r.html      # no repeated subject heading
    body = r.text.split("\n\nSee it:")[0]
    assert body == ("Hi Ana,\n\nFolded copy that YAML breaks over lines, and a score below 70! Then more.\n\n"
                    "As an architect, you have options.")
    # Without a value the CTA is the plans page, never `//`.
    assert r.links[0].startswith("https://www.borderbridge.example/plans?")


def test_the_preheader_is_the_first_rendered_sentence(catalog: Catalog) -> None:
    bare = catalog.render("demo.email_01", LEAD)
    assert bare.preheader == "Folded copy that YAML breaks over lines, and a score below 70!"
    trying = catalog.render("demo.email_01", LEAD, context={"plan": "Family Plus", "score": 71})
    assert trying.preheader == "You are trying the Family Plus plan."
    assert trying.preheader in trying.html                  # the inbox preview of the HTML part
    assert "a score above 70!" in trying.text and "You are moving with one child." in trying.text
    assert trying.links[0].startswith("https://www.borderbridge.example/plans/family-plus?")


def test_the_seed_layouts_keep_every_point_conditional_at_send_time(catalog: Catalog) -> None:
    seed = catalog.seed_content("demo.email_01")
    assert validate(seed) == []
    assert seed.preheader.startswith("{% filter first_sentence %}")
    assert "\n" not in seed.preheader    # it survives the console's one-line field
    assert "{% set paragraph %}" in seed.body and "{% set paragraph %}" in seed.text


def test_every_seeded_version_is_accepted_as_a_draft() -> None:
    # A seeded version is stored through the same shape checks as a draft (its preheader's source holds
    # every point: longer than a subject may be).
    real = Catalog()
    refused = {k: problems for k in real.specs if (problems := parse(real.seed_content(k).as_dict())[1])}
    assert refused == {}


BODY = """<mjml><mj-head><mj-preview>{{ preheader }}</mj-preview></mj-head><mj-body><mj-section><mj-column>
<mj-text><p>{% if score >= 70 and children < 3 %}{{ profession | with_article | capitalize }} with
{{ children_text }}{% endif %}</p></mj-text>
<mj-button href="{{ track(site_url ~ '/plans/' ~ ctx.get('plan', '') | slug) }}">Go</mj-button>
<mj-text><a href="{{ unsubscribe_url }}">Unsubscribe</a> {{ postal_address }}</mj-text>
</mj-column></mj-section></mj-body></mjml>"""
TEXT = "{{ profession | with_article }}, {{ child_word }}\nUnsubscribe: {{ unsubscribe_url }}\n{{ postal_address }}\n"


def test_a_stored_version_uses_the_filters_and_comparisons(catalog: Catalog) -> None:
    content = TemplateContent(subject="{{ profession | with_article }}", preheader="", body=BODY, text=TEXT)
    assert validate(content) == []
    # A comparison in a tag was escaped (`&gt;`) or broke the MJML parse (`<`): the tags are kept whole.
    assert "{% if score >= 70 and children < 3 %}" in compile_mjml(BODY)
    compiled = Compiled("demo.email_01", 3, content)
    lead = {**LEAD, "score": 80, "attributes": {"profession": "engineer", "children": 2}}
    r = catalog.render("demo.email_01", lead, context={"plan": "Family Plus"}, content=compiled)
    assert r.subject == "an engineer" and r.version == 3
    assert "An engineer with\ntwo children" in r.html
    assert r.links[1] == "https://www.borderbridge.example/plans/family-plus"
    assert r.text.startswith("an engineer, children\n")


def test_the_wording_filters() -> None:
    assert squash("  a\n  b   c ") == "a b c"
    assert first_sentence("\n\n  \nOne line. Two.\n\nNext para.") == "One line."
    assert first_sentence("No end\nhere") == "No end here"
    assert first_sentence("") == ""
