"""The quality meter's figures: how well a filter flags known flipped labels, what recycling
its discards would do, and reward-model accuracy with bootstrap intervals over pairs and seeds.

All functions are pure: they take sets of pair ids or arrays and return small records.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Detection:
    """Flagging flipped pairs as a binary classifier over the evaluated pairs."""

    pairs: int
    flipped: int
    flagged: int
    true_pos: int
    false_pos: int
    false_neg: int
    precision: float
    recall: float
    f1: float
    clean_discard_rate: float
    """Share of the clean (not flipped) pairs that the filter flagged, i.e. would throw away."""

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class RecyclingEffect:
    """Label errors in what survives a filter, without and with flipping its discards back in."""

    pairs: int
    kept: int
    discarded: int
    error_rate_before: float
    """Share of flipped labels among all evaluated pairs (the noise the filter faced)."""
    error_rate_kept: float
    """Share of flipped labels among the kept pairs (curation without recycling)."""
    errors_fixed: int
    """Discarded pairs that were truly flipped: recycling restores their true label."""
    errors_introduced: int
    """Discarded pairs that were clean: recycling gives them a wrong label."""
    error_rate_recycled: float
    """Share of wrong labels in kept + recycled pairs (every evaluated pair, relabeled)."""

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class CuratedErrors:
    """Wrong labels left in a curated set: pairs kept as stored and pairs relabeled flipped."""

    kept: int
    relabeled: int
    wrong_kept: int
    wrong_relabeled: int
    error_rate: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def detection_metrics(flagged: Collection[str], flipped: Collection[str],
                      universe: Collection[str]) -> Detection:
    """Precision / recall / F1 of `flagged` against the truly `flipped` pairs, both restricted
    to `universe` (the pairs the filter was run on). Precision is 0 when nothing is flagged."""
    pool = set(universe)
    flagged_set = set(flagged) & pool
    flipped_set = set(flipped) & pool
    tp = len(flagged_set & flipped_set)
    fp = len(flagged_set - flipped_set)
    fn = len(flipped_set - flagged_set)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    clean = len(pool) - len(flipped_set)
    return Detection(pairs=len(pool), flipped=len(flipped_set), flagged=len(flagged_set),
                     true_pos=tp, false_pos=fp, false_neg=fn, precision=precision, recall=recall,
                     f1=f1, clean_discard_rate=fp / clean if clean else 0.0)


def recycling_effect(discarded: Collection[str], flipped: Collection[str],
                     universe: Collection[str]) -> RecyclingEffect:
    """What keeping only the undiscarded pairs, or also flipping the discards, does to label errors."""
    pool = set(universe)
    dropped = set(discarded) & pool
    flipped_set = set(flipped) & pool
    kept = pool - dropped
    fixed = len(dropped & flipped_set)
    introduced = len(dropped - flipped_set)
    errors_kept = len(kept & flipped_set)
    return RecyclingEffect(
        pairs=len(pool), kept=len(kept), discarded=len(dropped),
        error_rate_before=len(flipped_set) / len(pool) if pool else 0.0,
        error_rate_kept=errors_kept / len(kept) if kept else 0.0,
        errors_fixed=fixed, errors_introduced=introduced,
        error_rate_recycled=(errors_kept + introduced) / len(pool) if pool else 0.0)


def curated_errors(kept: Collection[str], relabeled: Collection[str],
                   flipped: Collection[str]) -> CuratedErrors:
    """A kept pair is wrong when its stored label was flipped; a relabeled (flipped back) pair
    is wrong when its stored label was right. A pair in both sets counts as relabeled."""
    relabeled_set = set(relabeled)
    kept_set = set(kept) - relabeled_set
    flipped_set = set(flipped)
    wrong_kept = len(kept_set & flipped_set)
    wrong_relabeled = len(relabeled_set - flipped_set)
    total = len(kept_set) + len(relabeled_set)
    return CuratedErrors(kept=len(kept_set), relabeled=len(relabeled_set), wrong_kept=wrong_kept,
                         wrong_relabeled=wrong_relabeled,
                         error_rate=(wrong_kept + wrong_relabeled) / total if total else 0.0)


def pair_correct(scores: np.ndarray) -> np.ndarray:
    """Per pair: 1 when r_chosen > r_rejected, 0.5 on a tie, 0 otherwise; `scores` is (n, 2)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != 2:
        raise ValueError(f"scores must have shape (n, 2), got {scores.shape}")
    diff = scores[:, 0] - scores[:, 1]
    return np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0))


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, n_boot: int = 2000,
                 confidence: float = 0.95, seed: int = 0) -> Interval:
    """Mean of `values` with a percentile bootstrap interval (resampling the values)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_boot, data.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(mean=float(data.mean()), low=float(low), high=float(high), n=int(data.size))


def aggregate_seeds(per_seed: Sequence[Sequence[float] | np.ndarray], *, n_boot: int = 2000,
                    confidence: float = 0.95, seed: int = 0) -> Interval:
    """Mean over seeds of the per-seed means, with a bootstrap interval that resamples pairs
    within every seed (stratified) and seeds themselves, so both sources of variance count."""
    arrays = [np.asarray(v, dtype=np.float64) for v in per_seed]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("aggregate_seeds needs at least one non-empty seed")
    rng = np.random.default_rng(seed)
    boots = np.empty((n_boot, len(arrays)))
    for j, a in enumerate(arrays):
        boots[:, j] = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
    seed_pick = rng.integers(0, len(arrays), size=(n_boot, len(arrays)))
    means = np.take_along_axis(boots, seed_pick, axis=1).mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(mean=float(np.mean([a.mean() for a in arrays])), low=float(low),
                    high=float(high), n=len(arrays))


def mean_interval(values: Sequence[float], *, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Mean over seeds of a per-seed figure (F1, a rate) with a bootstrap over the seeds."""
    return bootstrap_ci(values, n_boot=n_boot, seed=seed)
