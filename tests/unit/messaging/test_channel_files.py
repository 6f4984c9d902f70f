"""audiences.yaml and personalization.yaml as files: what a good one yields, and that every malformed
shape is refused with the file's name (a bad file fails the start, it is not half-read)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from services.messaging.app.channels import (
    AUDIENCES_FILE,
    PERSONALIZATION_FILE,
    load_ad_suppression,
    personalization_rules,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_ad_suppression_rules_are_compiled_per_version_with_their_reasons(tmp_path: Path) -> None:
    # A version of its own per run: compiled rule sets are registered once per name for the process,
    # and a name compiled before (in this process or the one it was forked from) would be returned as is.
    version = uuid.uuid4().int % 10**9
    path = write(tmp_path, f"version: {version}\nad_suppression:\n"
                           "  - {name: vip, why: 'paid – no ads', when: {fact: lead.score, gte: 90}}\n"
                           "  - {name: quiet, when: {fact: event.type, eq: unsubscribed}}\n")
    rules = load_ad_suppression(path)
    assert rules.name == f"messaging.ad_suppression.v{version}"
    [match] = rules.evaluate({"lead": {"score": 90}, "event": {"type": "x", "properties": {}}, "signals": []})
    assert (match.rule, dict(match.meta)) == ("vip", {"why": "paid – no ads"})
    [match] = rules.evaluate({"lead": {"score": 1}, "event": {"type": "unsubscribed", "properties": {}},
                              "signals": []})
    assert (match.rule, dict(match.meta)) == ("quiet", {"why": ""})
    assert rules.evaluate({"lead": {"score": 89}, "event": {"type": "x", "properties": {}}, "signals": []}) == []


def test_the_shipped_ad_suppression_file_loads() -> None:
    assert load_ad_suppression(AUDIENCES_FILE).name == "messaging.ad_suppression.v1"
    assert load_ad_suppression().name == "messaging.ad_suppression.v1"


@pytest.mark.parametrize(("text", "problem"), [
    ("", "version: field required; ad_suppression: field required"),          # empty: no version, no rules
    ("ad_suppression: []\n", "version: field required"),                      # no version
    ("version: '1'\nad_suppression: []\n", "version: input should be a valid integer"),  # a version that is text
    ("version: 1\n", "ad_suppression: field required"),                        # no rules
    ("version: 1\nad_suppression: {name: x, when: {fact: a, eq: 1}}\n",        # rules not a list
     "ad_suppression: input should be a valid list"),
    ("version: 1\nad_suppression: [x]\n",                                      # a rule not a mapping
     "ad_suppression[0]: input should be a valid dictionary"),
    ("version: 1\nad_suppression: [{when: {fact: a, eq: 1}}]\n",               # no name
     "ad_suppression[0].name: field required"),
    ("version: 1\nad_suppression: [{name: '', when: {fact: a, eq: 1}}]\n",     # an empty name
     "ad_suppression[0].name: string should have at least 1 character"),
    ("version: 1\nad_suppression: [{name: x}]\n",                              # no condition
     "ad_suppression[0].when: field required"),
    ("version: 1\nad_suppression: [{name: x, when: [a]}]\n",                   # a condition not a mapping
     "ad_suppression[0].when: input should be a valid dictionary"),
    ("version: 1\nad_suppression: [{name: x, when: {fact: a, eq: 1}}, {name: y}]\n",  # the second is bad
     "ad_suppression[1].when: field required"),
])
def test_a_malformed_ad_suppression_file_is_refused_with_its_name(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    # the file's name, then what is wrong and where (nurture.datafiles lists every problem)
    with pytest.raises(ValueError, match=re.escape(f"rules.yaml: {problem}")):
        load_ad_suppression(path)


def test_personalization_rules_are_read_with_text_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "by_topic: {pricing: triggers.pricing_page, 2026: triggers.year}\n"
                           "by_lifecycle:\n  lead: [{journey: '{segment}', stage: education}]\n"
                           "  7: [{journey: customer}]\n")
    assert personalization_rules(path) == {
        "by_topic": {"pricing": "triggers.pricing_page", "2026": "triggers.year"},
        "by_lifecycle": {"lead": [{"journey": "{segment}", "stage": "education"}],
                         "7": [{"journey": "customer", "stage": ""}]}}  # a place without a stage: ""


def test_a_file_read_by_its_path_does_not_replace_the_shipped_rules(tmp_path: Path) -> None:
    shipped = personalization_rules()
    assert personalization_rules(write(tmp_path, "by_topic: {a: b}\n")) == {"by_topic": {"a": "b"},
                                                                             "by_lifecycle": {}}
    assert personalization_rules() == shipped == personalization_rules(PERSONALIZATION_FILE)
    assert shipped["by_topic"]["pricing"] == "triggers.pricing_page"


@pytest.mark.parametrize("text", ["", "by_topic:\nby_lifecycle:\n", "by_topic: {}\nby_lifecycle: {}\n"])
def test_an_empty_personalization_file_recommends_nothing(tmp_path: Path, text: str) -> None:
    assert personalization_rules(write(tmp_path, text)) == {"by_topic": {}, "by_lifecycle": {}}


@pytest.mark.parametrize(("text", "problem"), [
    ("by_topic: [pricing]\n", "by_topic: input should be a valid dictionary"),          # topics not a mapping
    ("by_topic: {pricing: [a, b]}\n", "by_topic.pricing: input should be a valid string"),  # content not a key
    ("by_topic: {pricing: a, demo: 3}\n", "by_topic.demo: input should be a valid string"),  # the second is bad
    ("by_lifecycle: [lead]\n", "by_lifecycle: input should be a valid dictionary"),     # stages not a mapping
    ("by_lifecycle: {lead: {journey: x}}\n",                                            # places not a list
     "by_lifecycle.lead: input should be a valid list"),
    ("by_lifecycle: {lead: [x]}\n", "by_lifecycle.lead[0]: input should be a valid dictionary"),  # not a mapping
    ("by_lifecycle: {lead: [{stage: education}]}\n",                                    # a place without a journey
     "by_lifecycle.lead[0].journey: field required"),
    ("by_lifecycle: {lead: [{journey: x}], mql: [{journey: ''}]}\n",                    # the second stage's empty
     "by_lifecycle.mql[0].journey: string should have at least 1 character"),
])
def test_a_malformed_personalization_file_is_refused_with_its_name(tmp_path: Path, text: str, problem: str) -> None:
    # the file's name, then what is wrong and where (nurture.datafiles lists every problem)
    with pytest.raises(ValueError, match=re.escape(f"rules.yaml: {problem}")):
        personalization_rules(write(tmp_path, text))
