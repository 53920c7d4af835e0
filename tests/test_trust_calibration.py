"""Calibrated flips on a pool with known noise, and no flips from an uninformative RM."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.trust import (
    Estimate,
    SymmetricPlatt,
    estimate_noise_rate,
    expected_precision,
    flag_rates,
    log_lr_counts,
    logit,
    merge_counts,
    noise_by_source,
    noise_by_source_counts,
    posterior_wrong,
    wilson,
)

POOL, GOLD, NOISE = 4000, 300, 0.20


def simulate(separation: float, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pool logits in stored orientation, pool wrong mask, clean gold logits in gold orientation)."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(POOL) < NOISE
    pool = np.where(wrong, rng.normal(-separation, 1.0, POOL), rng.normal(separation, 1.0, POOL))
    return pool, wrong, rng.normal(separation, 1.0, GOLD)


def test_informative_rm_recovers_the_noise_rate_and_flags_precisely() -> None:
    pool, wrong, gold = simulate(1.5)
    model = SymmetricPlatt().fit(gold)
    assert 2.0 < model.coef[0] < 4.0  # true log-likelihood ratio is 3x
    llr = model.log_lr(pool)

    noise = estimate_noise_rate(llr, seed=0)
    assert noise.low <= wrong.mean() <= noise.high  # type: ignore[operator]
    assert noise.value == pytest.approx(NOISE, abs=0.04)

    post = posterior_wrong(llr, noise.value)  # type: ignore[arg-type]
    confident = post >= 0.8
    assert confident.sum() > 300
    assert wrong[confident].mean() >= 0.75

    tpr, fpr = flag_rates(model, gold, noise.value, 0.8)  # type: ignore[arg-type]
    precision = expected_precision(noise.value, tpr, fpr)  # type: ignore[arg-type]
    flagged = post > 0.8
    assert precision.value == pytest.approx(wrong[flagged].mean(), abs=0.1)
    assert precision.low <= precision.value <= precision.high  # type: ignore[operator]


def test_uninformative_rm_flips_nothing() -> None:
    rng = np.random.default_rng(11)
    model = SymmetricPlatt().fit(rng.normal(0.0, 1.0, GOLD))
    assert abs(model.coef[0]) < 0.3
    post = posterior_wrong(model.log_lr(rng.normal(0.0, 1.0, POOL)), 0.2)
    assert post.max() < 0.8
    tpr, fpr = flag_rates(model, rng.normal(0.0, 1.0, GOLD), 0.2, 0.8)
    assert (tpr.value, fpr.value) == (0.0, 0.0)
    assert expected_precision(0.2, tpr, fpr).value is None


def test_uninformative_evidence_gives_an_interval_that_says_so() -> None:
    rng = np.random.default_rng(5)
    noise = estimate_noise_rate(rng.normal(0.0, 0.05, 2000), seed=1)
    assert noise.high - noise.low > 0.2  # type: ignore[operator]


def test_platt_temperature_undoes_an_overconfident_rm() -> None:
    # The RM's logit is 4x the true log-likelihood ratio: the fit should find ~1/4.
    rng = np.random.default_rng(2)
    true_llr = rng.normal(1.0, np.sqrt(2.0), 20000)
    right = rng.random(true_llr.size) < 1 / (1 + np.exp(-true_llr))
    gold_feature = 4.0 * np.where(right, true_llr, -true_llr)
    model = SymmetricPlatt().fit(gold_feature)
    assert model.coef[0] == pytest.approx(0.25, abs=0.03)


def test_platt_is_antisymmetric_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(1.0, 1.0, 200), rng.normal(0.5, 1.0, 200)])
    model = SymmetricPlatt().fit(x)
    assert model.prob_right(x) + model.prob_right(-x) == pytest.approx(np.ones(200))
    assert model.n == 200 and model.coef.shape == (2,)
    again = SymmetricPlatt.from_dict(model.to_dict())
    assert again.log_lr(x) == pytest.approx(model.log_lr(x))
    with pytest.raises(RuntimeError):
        SymmetricPlatt().log_lr(x)


def test_separable_gold_stays_finite() -> None:
    model = SymmetricPlatt().fit(np.array([2.0, 3.0, 4.0]))
    assert np.isfinite(model.coef).all()


def test_logit_and_posterior_edges() -> None:
    assert np.isfinite(logit(np.array([0.0, 1.0]))).all()
    assert logit(np.array([0.5]))[0] == pytest.approx(0.0)
    assert posterior_wrong(np.array([0.0]), 0.3)[0] == pytest.approx(0.3)


def test_expected_precision_bounds_follow_rates() -> None:
    tpr, fpr = wilson(60, 100), wilson(2, 100)
    est = expected_precision(0.2, tpr, fpr)
    assert est.value == pytest.approx(0.2 * 0.6 / (0.2 * 0.6 + 0.8 * 0.02))
    assert est.low < est.value < est.high  # type: ignore[operator]
    assert expected_precision(0.2, wilson(5, 10), wilson(0, 10)).value == 1.0
    assert expected_precision(0.2, Estimate(None, None, None, 0), fpr).value is None


def test_noise_by_source_reports_each_source_and_all() -> None:
    pool, _, _ = simulate(2.0, seed=8)
    llr = 4.0 * pool  # exact log-likelihood ratio for separation 2
    frame = pl.DataFrame({"source": np.where(np.arange(POOL) % 2 == 0, "hh", "uf"), "log_lr": llr})
    result = noise_by_source(frame, resamples=50)
    assert set(result) == {"hh", "uf", "all"}
    assert result["hh"].n + result["uf"].n == result["all"].n == POOL
    for est in result.values():
        assert est.value == pytest.approx(NOISE, abs=0.04)
    assert estimate_noise_rate(np.array([])) == Estimate(None, None, None, 0)


def test_noise_estimate_is_deterministic_and_clipped() -> None:
    llr = np.full(500, 8.0)  # every label confidently right
    a, b = estimate_noise_rate(llr, seed=4), estimate_noise_rate(llr, seed=4)
    assert a == b
    assert a.value == pytest.approx(1e-4, rel=1e-3)


def test_noise_from_partition_counts_is_the_whole_pools_estimate_in_bounded_memory() -> None:
    from pipeline.trust.noise import BIN_WIDTH, LLR_LIMIT, _em_fixed_point

    rng = np.random.default_rng(11)
    n = 200_000
    wrong = rng.random(n) < NOISE
    llr = 4.0 * np.where(wrong, rng.normal(-2.0, 1.0, n), rng.normal(2.0, 1.0, n))
    frame = pl.DataFrame({"source": np.where(rng.random(n) < 0.3, "hh", "uf"), "log_lr": llr})
    whole = log_lr_counts(frame)
    # Counts of ten partitions, added in any order, are the whole pool's counts.
    slices = [log_lr_counts(frame.slice(start, n // 10)) for start in range(0, n, n // 10)]
    assert merge_counts(slices[::-1]).equals(whole) and merge_counts(slices).equals(whole)
    # They hold one row per grid point and source, not one per pair.
    assert whole.height <= 2 * (2 * LLR_LIMIT / BIN_WIDTH + 1) < n
    estimates = noise_by_source_counts(merge_counts(slices[3:] + slices[:3]), resamples=50)
    assert estimates == noise_by_source(frame, resamples=50)
    assert estimates["all"].n == n and estimates["hh"].n + estimates["uf"].n == n
    # The grid moves the estimate by far less than its interval: exact EM on every float here.
    exact = float(_em_fixed_point(llr, np.ones((1, n)))[0])
    assert estimates["all"].value == pytest.approx(exact, abs=1e-3)
    assert estimates["all"].low <= wrong.mean() <= estimates["all"].high  # type: ignore[operator]
