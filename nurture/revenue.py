"""A won deal's amount in the one currency every report adds revenue up in, for every way a win comes in:
crm_sync's ReportDeal and an `opportunity_won` posted through the API read the same rates and refuse the
same amounts. The currency and its rates are data: the `revenue` part of
services/crm_sync/data/sync.yaml (the finance team's rates; the gateway reads that part only)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from nurture import datafiles
from nurture.limits import MAX_SAFE_INTEGER

RATES_FILE = Path(__file__).parents[1] / "services" / "crm_sync" / "data" / "sync.yaml"
CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True)
class Rates:
    currency: str = "USD"   # the one currency revenue is counted in
    rates: dict[str, float] = field(default_factory=dict)  # units of `currency` per unit of each other


def amount_problem(amount: object) -> str | None:
    """Why `amount` is no deal amount, or None: a number from 0 to 2^53-1. Revenue is summed over deals in
    every report: a NaN, or two near a double's top (their sum is infinity), leave those reports
    unanswerable, and a text or a negative one would be counted as nothing."""
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not (
            math.isfinite(amount) and 0 <= amount <= MAX_SAFE_INTEGER):
        return f"must be a number from 0 to {MAX_SAFE_INTEGER}"
    return None


def convert(rates: Rates, amount: float, currency: str, field_name: str = "currency",
            amount_name: str = "amount") -> tuple[float, str]:
    """`amount` in the revenue currency, and the currency code as read (no code: the revenue currency, as
    a CRM of one currency sends none). ValueError with the sentence naming the field when the code is no
    ISO 4217 code or has no rate: counting 100 JPY as 100 USD would be wrong."""
    code = currency.strip().upper() or rates.currency
    if not CURRENCY.fullmatch(code):
        raise ValueError(f"{field_name} must be an ISO 4217 code of three letters (e.g. USD), or empty")
    if code == rates.currency:
        return amount, code
    rate = rates.rates.get(code)
    if rate is None:
        raise ValueError(f"{field_name} {code} has no exchange rate to {rates.currency}, the currency revenue"
                         f" is counted in: add it to sync.yaml revenue.rates (or send the amount in"
                         f" {rates.currency})")
    converted = round(amount * rate, 2)
    if not converted <= MAX_SAFE_INTEGER:
        raise ValueError(f"{amount_name} in {rates.currency} is past {MAX_SAFE_INTEGER}")
    return converted, code


@cache
def load_rates(path: Path = RATES_FILE) -> Rates:
    """The `revenue` part of the file (its own service validates the whole file at start)."""
    raw = datafiles.read_yaml(path, empty={})
    part = raw.get("revenue") if isinstance(raw, dict) else None
    if not isinstance(part, dict):
        return Rates()
    rates = part.get("rates") or {}
    return Rates(currency=str(part.get("currency", "USD")),
                 rates={str(k): float(v) for k, v in rates.items()} if isinstance(rates, dict) else {})
