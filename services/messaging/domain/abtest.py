"""A/B report: which variant of a template wins, and how sure we are (two-proportion z-test)."""

from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA = 0.05


@dataclass(frozen=True)
class VariantStats:
    name: str
    sent: int
    opened: int
    clicked: int

    def rate(self, metric: str) -> float:
        hits = self.clicked if metric == "click_rate" else self.opened
        return hits / self.sent if self.sent else 0.0


@dataclass(frozen=True)
class Report:
    metric: str
    variants: list[VariantStats]
    winner: str
    p_value: float
    z: float
    significant: bool
    explanation: str


def two_proportion_z(hits_a: int, n_a: int, hits_b: int, n_b: int) -> tuple[float, float]:
    """(z, two-sided p) for the difference of two proportions with a pooled standard error."""
    if n_a == 0 or n_b == 0:
        return 0.0, 1.0
    pooled = (hits_a + hits_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (hits_a / n_a - hits_b / n_b) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def report(variants: list[VariantStats], alpha: float = ALPHA) -> Report:
    """Compare the best variant with the runner-up on click rate (open rate when nobody clicked)."""
    metric = "click_rate" if any(v.clicked for v in variants) else "open_rate"
    ranked = sorted(variants, key=lambda v: (v.rate(metric), v.sent), reverse=True)
    if len(ranked) < 2:
        return Report(metric, variants, "", 1.0, 0.0, False, "needs at least two variants with sends")
    best, second = ranked[0], ranked[1]
    hits = (lambda v: v.clicked) if metric == "click_rate" else (lambda v: v.opened)
    z, p = two_proportion_z(hits(best), best.sent, hits(second), second.sent)
    significant = p < alpha and best.rate(metric) > second.rate(metric)
    text = (f"{best.name} {metric} {best.rate(metric):.1%} vs {second.name} {second.rate(metric):.1%} "
            f"(n={best.sent}/{second.sent}), z={z:.2f}, p={p:.4f}: "
            + (f"{best.name} wins at {1 - alpha:.0%} confidence" if significant else "no significant winner yet"))
    return Report(metric, variants, best.name if significant else "", p, z, significant, text)
