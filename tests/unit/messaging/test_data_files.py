"""audiences.yaml and personalization.yaml are read through nurture.datafiles: every problem listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from nurture.datafiles import DataFileError
from services.messaging.app.channels import load_ad_suppression, personalization_rules


def test_a_bad_audiences_file_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "audiences.yaml"
    path.write_text("version: one\nad_suppression:\n  - {name: '', when: {fact: lead.score, gte: 70}}\n"
                    "  - {name: b, when: [1], because: x}\n")
    with pytest.raises(DataFileError) as err:
        load_ad_suppression(path)
    assert err.value.problems == [
        "version: input should be a valid integer",
        "ad_suppression[0].name: string should have at least 1 character",
        "ad_suppression[1].when: input should be a valid dictionary",
        "ad_suppression[1].because: unknown key",
    ]


def test_a_bad_audience_condition_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audiences.yaml"
    path.write_text("version: 99\nad_suppression:\n  - {name: a, when: {fact: lead.score, between: 1}}\n")
    with pytest.raises(DataFileError, match="a"):
        load_ad_suppression(path)


def test_a_bad_personalization_file_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "personalization.yaml"
    path.write_text("by_topic: {pricing: [a]}\nby_lifecycle:\n  lead: [{stage: education}]\n"
                    "  mql: {journey: x}\n")
    with pytest.raises(DataFileError) as err:
        personalization_rules(path)
    assert err.value.problems == [
        "by_topic.pricing: input should be a valid string",
        "by_lifecycle.lead[0].journey: field required",
        "by_lifecycle.mql: input should be a valid list",
    ]


def test_the_shipped_personalization_is_read_as_before() -> None:
    rules = personalization_rules()
    assert rules["by_topic"]["pricing"] == "triggers.pricing_page"
    assert rules["by_lifecycle"]["trial"] == [{"journey": "trial_nurture", "stage": "value"}]


def test_a_bad_template_catalog_lists_every_problem(tmp_path: Path) -> None:
    from services.messaging.domain.catalog import Catalog

    path = tmp_path / "catalog.yaml"
    path.write_text("sender: {name: X, adress: x@example.com}\ntemplates:\n"
                    "  a.email_01: {subject: Hi, points: [ok, {Label: text}]}\n"
                    "  a.email_02: {points: [ok], cta: {label: Go, url: /x}}\n")
    with pytest.raises(DataFileError) as err:
        Catalog(path)
    assert err.value.problems == [
        "sender.adress: unknown key",
        "templates.a.email_01.points[1]: must be text (quote a point containing ': '), got {'Label': 'text'}",
        "templates.a.email_02.subject: field required",
        "templates.a.email_02.cta.url: unknown key",
    ]
