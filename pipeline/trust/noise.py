"""The pool's label-noise rate, estimated from out-of-sample calibrated evidence.

Confident-learning style: given a calibrated log-likelihood ratio (stored label right : wrong)
per pool pair from models that never trained on that pair, the share of wrong labels is the
mixture proportion pi that makes the posteriors self-consistent. EM on pi alone: the E-step is
the posterior P(wrong) per pair at the current pi, the M-step their mean.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.special import expit

from pipeline.trust.intervals import Estimate

MIN_NOISE = 1e-4
MAX_NOISE = 0.5  # above a half, "wrong" and "flipped" swap meaning: labels carry no signal
_BISECTION_STEPS = 60


def _em_fixed_point(log_lr: np.ndarray) -> np.ndarray:
    """The EM fixed point pi = mean(P(wrong | llr, pi)) per row of `log_lr` (shape (b, n)).

    Iterating the EM update converges slowly (thousands of steps) when the evidence is weak,
    which is exactly when the answer matters most. mean(P(wrong | pi)) - pi has the sign of the
    mixture log-likelihood's slope, which is concave in pi, so bisection on that sign finds the
    same fixed point in a fixed 60 steps; the result is clipped to [MIN_NOISE, MAX_NOISE].
    """
    rows = log_lr.shape[0]
    lo, hi = np.full(rows, MIN_NOISE), np.full(rows, MAX_NOISE)
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2.0
        prior_logit = np.log(mid) - np.log1p(-mid)
        # ">=" with a hair of slack: a flat likelihood stays at 0.5, where EM started.
        rising = expit(prior_logit[:, None] - log_lr).mean(axis=1) >= mid - 1e-12
        lo, hi = np.where(rising, mid, lo), np.where(rising, hi, mid)
    return (lo + hi) / 2.0


def estimate_noise_rate(
    log_lr: np.ndarray, *, resamples: int = 200, seed: int = 0, level: float = 0.95
) -> Estimate:
    """P(stored label wrong) over the pool with a seeded percentile-bootstrap CI over pairs.

    Clipped to [1e-4, 0.5]. The estimate is only as good as the calibration of `log_lr`: an
    uninformative model gives log_lr ~ 0, a flat likelihood and an interval that says so.
    """
    llr = np.asarray(log_lr, dtype=float).ravel()
    llr = llr[np.isfinite(llr)]
    n = int(llr.size)
    if n == 0:
        return Estimate(None, None, None, 0)
    point = float(_em_fixed_point(llr[None, :])[0])
    if resamples <= 0:
        return Estimate(point, None, None, n)
    rng = np.random.default_rng(seed)
    boot = np.empty(resamples)
    chunk = max(1, min(resamples, 2_000_000 // n))  # bound memory: chunk x n floats at a time
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        boot[start:stop] = _em_fixed_point(llr[idx])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return Estimate(point, float(min(low, point)), float(max(high, point)), n)


def noise_by_source(frame: pl.DataFrame, *, resamples: int = 200, seed: int = 0) -> dict[str, Estimate]:
    """Noise estimates per source from (source, log_lr), plus "all" for the whole pool."""
    out: dict[str, Estimate] = {}
    for (source,), part in sorted(frame.group_by("source"), key=lambda item: str(item[0][0])):
        out[str(source)] = estimate_noise_rate(part["log_lr"].to_numpy(), resamples=resamples, seed=seed)
    out["all"] = estimate_noise_rate(frame["log_lr"].to_numpy(), resamples=resamples, seed=seed)
    return out
