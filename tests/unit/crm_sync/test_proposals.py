"""Proposals, the pure part: the offer the rules make for a profile, the document, the signed link."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nurture.datafiles import DataFileError
from services.crm_sync import proposals as doc

CFG = doc.load_proposals()
AT = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)


def lead(segment: str | None = None, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": "l1", "email": "a@example.com", "first_name": "Amara", "last_name": "Obi",
                            "segment": segment, "attributes": {}, "interests": {"countries": [], "topics": []}}
    base.update(extra)
    return base


def keys(offer: doc.Offer) -> list[tuple[str, str, str]]:
    return [(line.kind, line.key, line.rule) for line in offer.lines]


def test_an_entrepreneur_who_read_business_plans_and_wants_speed_gets_the_advisory_and_both_add_ons() -> None:
    offer = doc.choose(CFG, lead("entrepreneur", interests={"countries": ["CA"],
                                                           "topics": ["business_plan", "fast_track"]}))
    assert keys(offer) == [("plan", "investor", "entrepreneur_segment"),
                           ("addon", "business_plan_review", "business_plan_interest"),
                           ("addon", "fast_track", "fast_track_interest")]
    assert offer.total == 4900 + 750 + 990
    assert [p.name for p in offer.pathways] == ["canada_start_up_visa", "investor_programmes", "general_assessment"]


def test_each_segment_gets_its_plan_and_someone_without_one_the_explorer() -> None:
    assert doc.choose(CFG, lead("family")).plan == "family"
    assert doc.choose(CFG, lead("skilled_professional")).plan == "professional"
    bare = doc.choose(CFG, lead(None))
    assert keys(bare) == [("plan", "explorer", "everyone_else")]
    assert [p.name for p in bare.pathways] == ["general_assessment"]


def test_a_skilled_professional_looking_at_canada_is_shown_express_entry_first() -> None:
    offer = doc.choose(CFG, lead("skilled_professional", attributes={"countries_of_interest": ["CA"]}))
    assert offer.pathways[0].name == "canada_express_entry"
    assert "us_employment_visas" not in [p.name for p in offer.pathways]


def test_the_deal_and_then_the_caller_name_the_plan_over_the_segment_rules() -> None:
    deal = {"deal_id": "d1", "properties": {"plan": "explorer"}}
    assert keys(doc.choose(CFG, lead("entrepreneur"), deal))[0] == ("plan", "explorer", "deal_names_a_plan")
    # A deal naming a plan the file does not have falls through to the segment's rule.
    odd = {"deal_id": "d2", "properties": {"plan": "platinum"}}
    assert doc.choose(CFG, lead("family"), odd).plan == "family"
    assert keys(doc.choose(CFG, lead("entrepreneur"), deal, "family"))[0] == ("plan", "family", "requested")
    with pytest.raises(doc.UnknownPlan, match="platinum"):
        doc.choose(CFG, lead("family"), None, "platinum")


def test_an_add_on_is_added_once_when_two_of_its_reasons_hold() -> None:
    offer = doc.choose(CFG, lead("family", attributes={"timeline": "urgent"},
                                 interests={"countries": [], "topics": ["fast_track"]}))
    assert [line.key for line in offer.lines].count("fast_track") == 1


def test_the_document_carries_the_offer_and_escapes_what_the_lead_typed() -> None:
    who = lead("skilled_professional", first_name="<script>alert(1)</script>",
               attributes={"profession": "engineer", "countries_of_interest": ["CA"]})
    offer = doc.choose(CFG, who)
    html = doc.render(CFG, offer, who, reference="P-1234ABCD", created_at=AT,
                      owner="sam.taylor@borderbridge.example", meeting_link="https://meet.example/sam")
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "As an engineer looking at CA" in html
    assert "Skilled Pathway Plan" in html and "1,490.00" in html and "Canada, Express Entry" in html
    assert "valid until 2027-01-05" in html  # 30 days from the 6th of December
    assert "Sam Taylor" in html and 'href="https://meet.example/sam"' in html
    assert "100 Harbour Street" in html


def test_an_add_on_says_why_it_is_there() -> None:
    who = lead("entrepreneur", attributes={"business_sector": "fintech"},
               interests={"countries": [], "topics": ["business_plan"]})
    html = doc.render(CFG, doc.choose(CFG, who), who, reference="P-1", created_at=AT, owner=None, meeting_link=None)
    assert "Included because you downloaded business plan resources." in html
    assert "with your fintech business" in html
    assert "The BorderBridge team" in html  # no owner: the team signs


def test_a_link_verifies_only_under_a_configured_secret_and_untampered() -> None:
    token = doc.sign("s-new", "abc123")
    assert doc.verify(["s-new"], token) == "abc123"
    assert doc.verify(["s-other", "s-new"], token) == "abc123"  # signed before a rotation
    assert doc.verify(["s-other"], token) is None
    assert doc.verify(["s-new"], "abc124." + token.split(".")[1]) is None
    assert doc.verify(["s-new"], token + "x") is None
    assert doc.verify(["s-new"], "abc123") is None
    assert doc.verify([""], doc.sign("s-new", "abc123")) is None
    # Whatever a prospect types in the address bar is "not ours", never an error (the fuzz test's find).
    assert doc.verify(["s-new"], "s.\x01é\x0bDç\x13@\x12Cû") is None
    assert doc.verify(["s-new"], "abc123." + "é" * 24) is None
    with pytest.raises(ValueError):
        doc.sign("", "abc123")


def test_a_bad_file_names_every_problem(tmp_path: Path) -> None:
    shutil.copy(doc.DATA / doc.DOCUMENT_TEMPLATE, tmp_path / doc.DOCUMENT_TEMPLATE)
    text = (doc.DEFAULT_FILE.read_text()
            .replace("plan: investor", "plan: investors")
            .replace("addon: fast_track", "addon: fast")
            .replace("    plan_from: deal.properties.plan", "    plan_from: deal.properties.plan\n    plan: family"))
    (tmp_path / "proposals.yaml").write_text(text)
    with pytest.raises(DataFileError) as err:
        doc.load_proposals(tmp_path / "proposals.yaml")
    problems = err.value.problems
    assert "plan_rules.entrepreneur_segment: unknown plan 'investors'" in problems
    assert "addon_rules.fast_track_interest: unknown add-on 'fast'" in problems
    assert "plan_rules.deal_names_a_plan: give exactly one of plan and plan_from" in problems
