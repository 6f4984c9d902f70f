"""Validation of a template's content lists every problem of each kind, and the seeded catalog has none."""

from __future__ import annotations

import pytest

from services.messaging.domain.catalog import Catalog
from services.messaging.domain.content import TemplateContent, Variant, parse, validate

BODY = """<mjml><mj-body><mj-section><mj-column>
<mj-text>Hi {{ first_name }}</mj-text>
<mj-button href="{{ cta_url }}">Go</mj-button>
<mj-text><a href="{{ track('https://www.borderbridge.example/guide?a=1&b=2') }}">Guide</a></mj-text>
<mj-text><a href="{{ unsubscribe_url }}">Unsubscribe</a> {{ postal_address }}</mj-text>
</mj-column></mj-section></mj-body></mjml>"""
TEXT = "Hi {{ first_name }}\n{{ cta_url }}\nUnsubscribe: {{ unsubscribe_url }}\n{{ postal_address }}\n"


def content(**changes: object) -> TemplateContent:
    base = {"subject": "Hello {{ first_name }}", "preheader": "", "body": BODY, "text": TEXT, "variants": {}}
    return TemplateContent(**{**base, **changes})  # type: ignore[arg-type]


def test_valid_content_has_no_problem() -> None:
    assert validate(content()) == []


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog()


def test_every_seeded_template_is_valid(catalog: Catalog) -> None:
    assert {k: validate(catalog.seed_content(k)) for k in catalog.specs if validate(catalog.seed_content(k))} == {}


def test_unknown_variables_are_named_in_each_part() -> None:
    problems = validate(content(subject="Hi {{ nickname }}", text=TEXT + "{{ favourite_colour }}",
                                variants={"b": Variant(subject="{{ shoe_size }}")}))
    assert "subject: unknown variable 'nickname'" in problems
    assert "text: unknown variable 'favourite_colour'" in problems
    assert "variants.b.subject: unknown variable 'shoe_size'" in problems
    # A loop's own variable and the send's context are not unknown.
    assert validate(content(text=TEXT + "{% for c in countries %}{{ c }}{% endfor %}{{ ctx.get('plan') }}")) == []


def test_markup_that_does_not_compile() -> None:
    assert any(p.startswith("body: MJML does not compile") for p in validate(content(body="<mjml><mj-body>")))
    assert any("not an MJML document" in p for p in validate(content(body="<p>hi</p>")))
    assert any(p.startswith("body: template syntax error") for p in validate(content(body=BODY + "{% if %}")))


def test_a_missing_unsubscribe_link_or_postal_address() -> None:
    problems = validate(content(body=BODY.replace("{{ postal_address }}", "").replace(
        '<a href="{{ unsubscribe_url }}">Unsubscribe</a>', ""), text="Hi\n"))
    assert {"body: no unsubscribe link ({{ unsubscribe_url }})", "body: no postal address ({{ postal_address }})",
            "text: no unsubscribe link ({{ unsubscribe_url }})", "text: no postal address ({{ postal_address }})"
            } <= set(problems)


def test_links_that_are_not_tracked() -> None:
    body = BODY.replace("</mj-column>", '<mj-button href="https://example.com/raw">Raw</mj-button>'
                                        '<mj-text><a href="{{ site_url }}/x">x</a>'
                                        '<a href="mailto:help@example.com">mail</a></mj-text></mj-column>')
    problems = validate(content(body=body, text=TEXT + "See https://example.com/plain\n"))
    assert any("body: link not tracked: 'https://example.com/raw'" in p for p in problems)
    assert any("body: link not tracked: '{{ site_url }}/x'" in p for p in problems)
    assert not any("mailto" in p for p in problems)
    assert any("text: link not tracked: 'https://example.com/plain'" in p for p in problems)


def test_required_parts_and_shape() -> None:
    assert {"subject: is required", "text: the plain-text part is required"} <= set(
        validate(content(subject=" ", text="")))
    found, problems = parse({"subject": "x", "body": 3, "variants": {"Bad Name": {}}, "extra": 1})
    assert found is None and any(p.startswith("body:") for p in problems)
    assert any(p.startswith("text:") for p in problems) and any(p.startswith("extra:") for p in problems)


def test_tracked_links_render_through_the_tracker_with_the_address_unescaped(catalog: Catalog) -> None:
    from services.messaging.domain.content import Compiled

    compiled = Compiled("family.custom", 3, content())
    rendered = catalog.render("family.custom", {"id": "x", "first_name": "Ana"}, content=compiled,
                              track=lambda url, i: f"https://t.example/c/{i}", unsubscribe_url="https://u/x")
    assert rendered.links == ("https://www.borderbridge.example/?utm_source=nurture&utm_medium=email&"
                              "utm_campaign=family&utm_content=custom",
                              "https://www.borderbridge.example/guide?a=1&b=2")
    assert 'href="https://t.example/c/1"' in rendered.html and rendered.version == 3
