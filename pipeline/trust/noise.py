"""The pool's label-noise rate, estimated from out-of-sample calibrated evidence.

Confident-learning style: given a calibrated log-likelihood ratio (stored label right : wrong)
per pool pair from models that never trained on that pair, the share of wrong labels is the
mixture proportion pi that makes the posteriors self-consistent. EM on pi alone: the E-step is
the posterior P(wrong) per pair at the current pi, the M-step their mean.

The estimate depends on the pairs only through how many sit at each log-LR, so it runs on counts
per point of a fine grid (`BIN_WIDTH`), never on one float per pair: tasks count their own pairs,
the counts add up across partitions in any order (integers), and the estimate and its bootstrap
(multinomial resamples of the counts, the same law as resampling pairs) cost the same at 40M
pairs as at 40k. Rounding to the grid moves a pair's posterior by at most BIN_WIDTH / 8.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.special import expit

from pipeline.trust.intervals import Estimate

BIN_WIDTH = 1 / 256
"""The log-LR grid of the estimate: a value is rounded to the nearest multiple of it."""
LLR_LIMIT = 40.0
"""Log-LRs beyond +-LLR_LIMIT are clipped to it (a posterior of about 4e-18 either way)."""
COUNTS_SCHEMA = {"source": pl.Utf8, "bin": pl.Int32, "n": pl.Int64}
MIN_NOISE = 1e-4
MAX_NOISE = 0.5  # above a half, "wrong" and "flipped" swap meaning: labels carry no signal
_BISECTION_STEPS = 60


def _em_fixed_point(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The EM fixed point pi = mean(P(wrong | llr, pi)) per row of `weights` (shape (b, m)): the
    count of pairs at each log-LR of `values` (shape (m,)).

    Iterating the EM update converges slowly (thousands of steps) when the evidence is weak,
    which is exactly when the answer matters most. mean(P(wrong | pi)) - pi has the sign of the
    mixture log-likelihood's slope, which is concave in pi, so bisection on that sign finds the
    same fixed point in a fixed 60 steps; the result is clipped to [MIN_NOISE, MAX_NOISE].
    """
    rows = weights.shape[0]
    totals = weights.sum(axis=1)
    lo, hi = np.full(rows, MIN_NOISE), np.full(rows, MAX_NOISE)
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2.0
        prior_logit = np.log(mid) - np.log1p(-mid)
        # ">=" with a hair of slack: a flat likelihood stays at 0.5, where EM started.
        wrong = (expit(prior_logit[:, None] - values[None, :]) * weights).sum(axis=1) / totals
        rising = wrong >= mid - 1e-12
        lo, hi = np.where(rising, mid, lo), np.where(rising, hi, mid)
    return (lo + hi) / 2.0


def _grid(finite: np.ndarray) -> np.ndarray:
    """The grid point of each finite log-LR (clipped to +-LLR_LIMIT, rounded half to even)."""
    return np.rint(np.clip(finite, -LLR_LIMIT, LLR_LIMIT) / BIN_WIDTH).astype(np.int32)


def grid_counts(log_lr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(grid points, counts) of the finite values of `log_lr`, grid points ascending."""
    llr = np.asarray(log_lr, dtype=float).ravel()
    bins, counts = np.unique(_grid(llr[np.isfinite(llr)]), return_counts=True)
    return bins, counts.astype(np.int64)


def log_lr_counts(frame: pl.DataFrame) -> pl.DataFrame:
    """(source, bin, n) from (source, log_lr): how many pairs of each source sit at each grid point
    (non-finite log-LRs left out, as `grid_counts` does)."""
    finite = frame.select("source", pl.col("log_lr").cast(pl.Float64)).filter(pl.col("log_lr").is_finite())
    grid = pl.Series(_grid(finite["log_lr"].to_numpy()))
    counts = finite.select("source", bin=grid).group_by("source", "bin").agg(n=pl.len().cast(pl.Int64))
    return merge_counts([counts])


def merge_counts(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Counts of several partitions as one (source, bin, n) frame, sorted: the same whatever the
    order of `frames`."""
    frames = [f for f in frames if f.height]
    if not frames:
        return pl.DataFrame(schema=COUNTS_SCHEMA)
    return (pl.concat([f.select("source", "bin", "n").cast(COUNTS_SCHEMA) for f in frames])  # type: ignore[arg-type]
            .group_by("source", "bin").agg(pl.col("n").sum()).sort("source", "bin"))


def estimate_noise_rate(
    log_lr: np.ndarray, *, resamples: int = 200, seed: int = 0, level: float = 0.95
) -> Estimate:
    """P(stored label wrong) over the pool with a seeded percentile-bootstrap CI over pairs.

    Clipped to [1e-4, 0.5]. The estimate is only as good as the calibration of `log_lr`: an
    uninformative model gives log_lr ~ 0, a flat likelihood and an interval that says so.
    """
    bins, counts = grid_counts(log_lr)
    return estimate_from_counts(bins, counts, resamples=resamples, seed=seed, level=level)


def estimate_from_counts(
    bins: np.ndarray, counts: np.ndarray, *, resamples: int = 200, seed: int = 0, level: float = 0.95
) -> Estimate:
    """`estimate_noise_rate` from grid counts (`grid_counts`): the bootstrap draws the pool's n
    pairs from the counts (a multinomial per resample), as resampling the pairs would."""
    values = np.asarray(bins, dtype=float) * BIN_WIDTH
    weights = np.asarray(counts, dtype=float)
    n = int(weights.sum())
    if n == 0:
        return Estimate(None, None, None, 0)
    point = float(_em_fixed_point(values, weights[None, :])[0])
    if resamples <= 0:
        return Estimate(point, None, None, n)
    rng = np.random.default_rng(seed)
    boot = np.empty(resamples)
    chunk = max(1, min(resamples, 2_000_000 // values.size))  # bound memory: chunk x bins floats
    shares = weights / n
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        boot[start:stop] = _em_fixed_point(values, rng.multinomial(n, shares, size=stop - start))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return Estimate(point, float(min(low, point)), float(max(high, point)), n)


def noise_by_source(frame: pl.DataFrame, *, resamples: int = 200, seed: int = 0) -> dict[str, Estimate]:
    """Noise estimates per source from (source, log_lr), plus "all" for the whole pool."""
    return noise_by_source_counts(log_lr_counts(frame), resamples=resamples, seed=seed)


def noise_by_source_counts(counts: pl.DataFrame, *, resamples: int = 200, seed: int = 0
                           ) -> dict[str, Estimate]:
    """Noise estimates per source from (source, bin, n) counts (`log_lr_counts`, `merge_counts`),
    plus "all" for the whole pool."""
    out: dict[str, Estimate] = {}
    for (source,), part in sorted(counts.group_by("source"), key=lambda item: str(item[0][0])):
        out[str(source)] = estimate_from_counts(part["bin"].to_numpy(), part["n"].to_numpy(),
                                                resamples=resamples, seed=seed)
    pooled = counts.group_by("bin").agg(pl.col("n").sum()).sort("bin")
    out["all"] = estimate_from_counts(pooled["bin"].to_numpy(), pooled["n"].to_numpy(),
                                      resamples=resamples, seed=seed)
    return out
