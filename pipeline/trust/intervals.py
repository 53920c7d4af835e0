"""Point estimates that always travel with their uncertainty.

Every quality figure the loop reports (gold accuracy, judge reliability, noise rate, precision)
is an `Estimate`: a value, a confidence interval and the number of observations behind it, so a
reader can never mistake 3 lucky pairs for a reliable model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from scipy.stats import norm


@dataclass(frozen=True)
class Estimate:
    """A value with a confidence interval and its sample size; None everywhere when n == 0."""

    value: float | None
    low: float | None
    high: float | None
    n: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (for rounds/N/summary.json and decision rows)."""
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Estimate:
        """Inverse of `to_dict`, so a stored round summary can be read back."""
        return cls(data.get("value"), data.get("low"), data.get("high"), int(data.get("n", 0)))

    def __str__(self) -> str:
        if self.value is None:
            return f"n/a (n={self.n})"
        if self.low is None or self.high is None:
            return f"{self.value:.3f}, n={self.n}"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}], n={self.n}"


def z_value(level: float) -> float:
    """Two-sided standard-normal quantile for a confidence level (1.96 for 0.95)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    return float(norm.ppf(1.0 - (1.0 - level) / 2.0))


def wilson(successes: int, n: int, level: float = 0.95) -> Estimate:
    """Wilson score interval for a proportion.

    Wilson rather than the normal approximation because the loop often measures small sets
    (a judge's decided gold pairs) and proportions near 0 or 1, where the Wald interval collapses
    to a width of zero and would make a judge with 3/3 right look certain.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return Estimate(None, None, None, 0)
    z = z_value(level)
    p = successes / n
    z2n = z * z / n
    denom = 1.0 + z2n
    center = (p + z2n / 2.0) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n)) / denom
    return Estimate(p, max(0.0, center - half), min(1.0, center + half), n)
