"""The meter's figures on constructed cases whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.quality.metrics import (
    aggregate_seeds,
    bootstrap_ci,
    detection_metrics,
    pair_correct,
    recycling_effect,
)

UNIVERSE = [f"p{i}" for i in range(10)]
FLIPPED = {"p0", "p1", "p2", "p3"}


def test_detection_counts_precision_recall_f1_and_clean_discards() -> None:
    # flags 3 of the 4 flipped pairs and 1 of the 6 clean ones; "x" is outside the run
    d = detection_metrics({"p0", "p1", "p2", "p9", "x"}, FLIPPED, UNIVERSE)
    assert (d.pairs, d.flipped, d.flagged) == (10, 4, 4)
    assert (d.true_pos, d.false_pos, d.false_neg) == (3, 1, 1)
    assert d.precision == pytest.approx(0.75)
    assert d.recall == pytest.approx(0.75)
    assert d.f1 == pytest.approx(0.75)
    assert d.clean_discard_rate == pytest.approx(1 / 6)


def test_detection_edge_cases() -> None:
    perfect = detection_metrics(FLIPPED, FLIPPED, UNIVERSE)
    assert (perfect.precision, perfect.recall, perfect.f1, perfect.clean_discard_rate) == (1, 1, 1, 0)
    nothing = detection_metrics(set(), FLIPPED, UNIVERSE)
    assert (nothing.precision, nothing.recall, nothing.f1) == (0, 0, 0)
    everything = detection_metrics(UNIVERSE, FLIPPED, UNIVERSE)
    assert everything.recall == 1 and everything.precision == pytest.approx(0.4)
    assert everything.clean_discard_rate == 1


def test_recycling_turns_caught_flips_into_right_labels() -> None:
    effect = recycling_effect({"p0", "p1", "p2", "p9"}, FLIPPED, UNIVERSE)
    assert (effect.kept, effect.discarded) == (6, 4)
    assert effect.error_rate_before == pytest.approx(0.4)
    assert effect.error_rate_kept == pytest.approx(1 / 6)  # p3 survives
    assert (effect.errors_fixed, effect.errors_introduced) == (3, 1)
    assert effect.error_rate_recycled == pytest.approx(2 / 10)  # p3 still wrong, p9 now wrong


def test_pair_correct_counts_ties_as_half() -> None:
    scores = np.array([[2.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    assert pair_correct(scores).tolist() == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="shape"):
        pair_correct(np.zeros(3))


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_data() -> None:
    rng = np.random.default_rng(0)
    small = rng.random(50) < 0.8
    large = rng.random(5000) < 0.8
    a, b = bootstrap_ci(small, seed=1), bootstrap_ci(large, seed=1)
    assert a.low <= a.mean <= a.high and b.low <= b.mean <= b.high
    assert (b.high - b.low) < (a.high - a.low)
    assert 0.78 < b.mean < 0.82 and b.low < 0.8 < b.high
    assert bootstrap_ci([1, 1, 1]).as_dict() == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 3}
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)


def test_aggregate_seeds_averages_seed_means_and_widens_when_seeds_disagree() -> None:
    agree = aggregate_seeds([np.ones(100) * 0.7, np.ones(100) * 0.7])
    assert agree.mean == pytest.approx(0.7) and agree.high - agree.low == pytest.approx(0, abs=1e-12)
    disagree = aggregate_seeds([np.ones(100) * 0.6, np.ones(100) * 0.8, np.ones(10) * 0.7])
    assert disagree.mean == pytest.approx(0.7) and disagree.n == 3
    assert disagree.low < 0.7 < disagree.high
    with pytest.raises(ValueError):
        aggregate_seeds([])


def test_random_subset_is_seeded_sized_and_order_independent() -> None:
    import polars as pl

    from pipeline.quality.heldout import random_subset

    labels = pl.DataFrame({"pair_id": [f"p{i:02d}" for i in range(30)], "verdict": ["chosen"] * 30})
    a = random_subset(labels, 10, seed=1)
    assert a.height == 10 and a["pair_id"].n_unique() == 10
    assert a.equals(random_subset(labels.reverse(), 10, seed=1))
    assert not a.equals(random_subset(labels, 10, seed=2))
    assert random_subset(labels, 50, seed=0).height == 30
