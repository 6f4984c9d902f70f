"""sync.yaml is read through nurture.datafiles: a bad file lists every problem, shape and references."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nurture import revenue
from nurture.datafiles import DataFileError
from services.crm_sync import domain


def shipped() -> dict:
    return yaml.safe_load(domain.DEFAULT_CONFIG.read_text())


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "sync.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_bad_shape_lists_every_problem(tmp_path: Path) -> None:
    doc = shipped()
    doc["max_clock_skew_s"] = -1
    doc["fields"][0] = {"lead": "email", "policy": "always_crm"}
    doc["teams"]["general"][0]["owner_email"] = "x@example.com"
    del doc["deal_stages"]
    path = write(tmp_path, doc)
    with pytest.raises(DataFileError) as err:
        domain.load_config(path)
    assert sorted(err.value.problems) == sorted([
        "max_clock_skew_s: must be a number of seconds, 0 or more",
        "fields[0].crm: field required",
        "teams.general[0].owner_email: unknown key",
        "deal_stages: field required",
    ])
    assert str(err.value).startswith(f"{path}: ")


def test_unknown_policies_and_teams_are_all_named(tmp_path: Path) -> None:
    doc = shipped()
    doc["fields"][1]["policy"] = "newest"
    doc["assignment"][0]["team"] = "nobody"
    doc["teams"]["families"] = []
    families = next(r["name"] for r in doc["assignment"] if r["team"] == "families")
    with pytest.raises(DataFileError) as err:
        domain.load_config(write(tmp_path, doc))
    assert err.value.problems == [
        f"field {doc['fields'][1]['lead']}: unknown policy newest",
        f"assignment {doc['assignment'][0]['name']}: unknown or empty team nobody",
        f"assignment {families}: unknown or empty team families",
    ]


def test_the_shipped_file_keeps_its_rule_actions() -> None:
    cfg = domain.load_config()
    assert cfg.max_clock_skew.total_seconds() == 1800
    # A rule's own keys (the team, the task's fields) reach the compiled rules as its action.
    doc = shipped()
    assert [(s.name, s.meta) for s in cfg.assignment.specs] == [
        (r["name"], {"team": r["team"]}) for r in doc["assignment"]]
    assert [s.meta for s in cfg.tasks.specs] == [
        {k: v for k, v in r.items() if k not in ("name", "when")} for r in doc["tasks"]]


def test_revenue_names_currencies_and_rates_it_can_convert_with(tmp_path: Path) -> None:
    # The rates are the shared file's (nurture/revenue.yaml), which the gateway converts posted wins with.
    assert (domain.load_config().revenue_currency, domain.load_config().rates["EUR"]) == ("USD", 1.08)
    path = tmp_path / "revenue.yaml"
    path.write_text(yaml.safe_dump({"currency": "usd", "rates": {"EUR": 0, "GBP": -1.2, "Yen": 0.0067}}))
    with pytest.raises(DataFileError) as err:
        revenue.load_rates(path)
    assert err.value.problems == [
        "usd is not a currency code (three capital letters, ISO 4217)",
        "Yen is not a currency code (three capital letters, ISO 4217)",
        "rates.EUR: must be a number above 0", "rates.GBP: must be a number above 0"]
    path.write_text(yaml.safe_dump({"rates": {"EUR": 1.1}, "spot": True}))
    with pytest.raises(DataFileError) as err:
        revenue.load_rates(path)
    assert {p.split(":")[0] for p in err.value.problems} == {"currency", "spot"}, err.value.problems


def test_a_qualification_rule_names_its_status(tmp_path: Path) -> None:
    doc = shipped()
    doc["qualification"]["rules"].append({"name": "no_status", "when": {"fact": "lead.score", "gt": 1}})
    with pytest.raises(DataFileError) as err:
        domain.load_config(write(tmp_path, doc))
    assert err.value.problems == ["qualification.rules no_status: needs a status (a non-empty string)"]


def test_the_gateway_converts_a_posted_win_at_the_rates_crm_sync_loads() -> None:
    # An opportunity_won posted through the API is converted by nurture.revenue from the same file.
    cfg = domain.load_config()
    rates = revenue.load_rates()
    assert (rates.currency, rates.rates) == (cfg.revenue_currency, cfg.rates) and rates.rates
    assert revenue.convert(rates, 100, "eur") == domain.revenue(cfg, 100, "eur") == (108.0, "EUR")
