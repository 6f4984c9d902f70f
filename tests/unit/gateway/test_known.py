"""The gateway's list of mailbox providers is messaging's (its data file), and "other" for the rest."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.known import PROVIDERS

DATA = Path(__file__).resolve().parents[3] / "services" / "messaging" / "data" / "deliverability.yaml"


def test_the_providers_a_report_accepts_are_messagings() -> None:
    providers = yaml.safe_load(DATA.read_text())["providers"]
    assert (*providers, "other") == PROVIDERS
