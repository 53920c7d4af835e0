"""Wilson intervals and the Estimate record every quality figure travels in."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from pipeline.trust import Estimate, wilson


@pytest.mark.parametrize(("k", "n"), [(0, 10), (5, 10), (10, 10), (61, 120), (3, 3), (1, 400)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    est = wilson(k, n)
    assert est.value == pytest.approx(k / n)
    assert est.low == pytest.approx(ci.low, abs=1e-9)
    assert est.high == pytest.approx(ci.high, abs=1e-9)
    assert est.n == n


def test_three_of_three_is_not_proof_of_skill() -> None:
    est = wilson(3, 3)
    assert est.low is not None and 0.43 < est.low < 0.45


def test_wider_level_gives_wider_interval() -> None:
    narrow, wide = wilson(40, 80, level=0.8), wilson(40, 80, level=0.99)
    assert wide.low < narrow.low < narrow.high < wide.high  # type: ignore[operator]


def test_empty_sample_has_no_value() -> None:
    est = wilson(0, 0)
    assert est == Estimate(None, None, None, 0)
    assert str(est) == "n/a (n=0)"


def test_invalid_counts_are_rejected() -> None:
    with pytest.raises(ValueError):
        wilson(5, 3)
    with pytest.raises(ValueError):
        wilson(1, 3, level=1.0)


def test_estimate_prints_and_round_trips() -> None:
    est = Estimate(0.512, 0.445, 0.579, 120)
    assert str(est) == "0.512 [0.445, 0.579], n=120"
    assert Estimate.from_dict(est.to_dict()) == est
