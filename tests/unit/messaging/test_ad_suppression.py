"""audiences.yaml: who is kept out of ad audiences (the seed: converted or highly engaged prospects)."""

from __future__ import annotations

import pytest

from services.messaging.app.channels import ad_suppression_for


def _lead(**fields: object) -> dict[str, object]:
    return {"id": "l", "lifecycle_stage": "lead", "score": 20, **fields}


@pytest.mark.parametrize(("lead", "etype", "props", "signals", "reason"), [
    (_lead(score=70), "page_viewed", {}, [], "highly_engaged"),       # the threshold itself
    (_lead(score=69), "page_viewed", {}, [], None),
    (_lead(), "email_clicked", {}, ["high_engagement"], "highly_engaged"),
    (_lead(lifecycle_stage="customer"), "page_viewed", {}, [], "customer"),
    (_lead(), "opportunity_won", {}, [], "customer"),
    (_lead(), "stage_changed", {"old": "sql", "new": "customer"}, [], "customer"),
    (_lead(), "subscribed", {}, [], "customer"),
    (_lead(), "subscribed", {"channel": "email"}, [], None),   # consent again, not a purchase
    (_lead(), "unsubscribed", {"scope": "nurture"}, [], "unsubscribed"),
    (_lead(), "page_viewed", {"category": "pricing"}, ["pricing_interest"], None),
])
def test_who_is_suppressed_from_ads(lead: dict[str, object], etype: str, props: dict[str, object],
                                    signals: list[str], reason: str | None) -> None:
    assert ad_suppression_for(lead, etype, props, signals) == reason


def test_a_catalog_point_that_yaml_reads_as_a_mapping_is_refused(tmp_path: object) -> None:
    from pathlib import Path

    from services.messaging.domain.catalog import Catalog

    path = Path(str(tmp_path)) / "catalog.yaml"
    path.write_text("templates:\n  x.email_01:\n    subject: Hi\n    points:\n    - Expansion: adding family\n")
    with pytest.raises(ValueError, match="x.email_01"):
        Catalog(path)
