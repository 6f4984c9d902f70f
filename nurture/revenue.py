"""A won deal's amount in the one currency every report adds revenue up in, for every way a win comes in:
crm_sync's ReportDeal and an `opportunity_won` posted through the API read the same rates and refuse the
same amounts. The currency and its rates are data, nurture/revenue.yaml (the finance team's rates), shared
by the two as the package that holds them is."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from pydantic import Field

from nurture import datafiles
from nurture.limits import MAX_SAFE_INTEGER

RATES_FILE = Path(__file__).with_name("revenue.yaml")
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
                         f" is counted in: add it to nurture/revenue.yaml rates (or send the amount in"
                         f" {rates.currency})")
    converted = round(amount * rate, 2)
    if not converted <= MAX_SAFE_INTEGER:
        raise ValueError(f"{amount_name} in {rates.currency} is past {MAX_SAFE_INTEGER}")
    return converted, code


class _RatesFile(datafiles.Strict):
    currency: str
    rates: dict[str, float] = Field(default_factory=dict)


@cache
def load_rates(path: Path = RATES_FILE) -> Rates:
    """The revenue currency and its rates (a DataFileError listing every problem: each process that
    converts refuses to start on a file it could not convert with)."""
    raw = datafiles.validate(_RatesFile, datafiles.read_yaml(path), path)
    problems = [f"{code} is not a currency code (three capital letters, ISO 4217)"
                for code in [raw.currency, *raw.rates] if not CURRENCY.fullmatch(code)]
    problems += [f"rates.{code}: must be a number above 0" for code, rate in raw.rates.items()
                 if not (math.isfinite(rate) and rate > 0)]
    if problems:
        raise datafiles.DataFileError(problems, path)
    return Rates(currency=raw.currency, rates=dict(raw.rates))
