"""Judges earn their vote: accuracy and coverage on gold, log-odds weights, weighted votes."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from pipeline.trust import (
    Estimate,
    Reliability,
    is_reliable,
    judge_reliability,
    rm_reliability,
    vote_weight,
    weighted_vote_score,
    wilson,
)

N_GOLD = 300


def gold_table() -> pl.DataFrame:
    rng = np.random.default_rng(0)
    verdicts = np.where(rng.random(N_GOLD) < 0.6, "chosen", "rejected")
    return pl.DataFrame({"pair_id": [f"g{i}" for i in range(N_GOLD)], "verdict": verdicts})


def judge_rows(name: str, gold: pl.DataFrame, accuracy: float, seed: int) -> pl.DataFrame:
    """A judge right with probability `accuracy` on every gold pair (accuracy 0.5 = coin flip)."""
    rng = np.random.default_rng(seed)
    right = rng.random(gold.height) < accuracy
    flip = {"chosen": "rejected", "rejected": "chosen"}
    verdicts = [v if ok else flip[v] for v, ok in zip(gold["verdict"], right, strict=True)]
    return pl.DataFrame({"pair_id": gold["pair_id"], "judge": name, "verdict": verdicts})


def test_chance_judge_gets_no_vote_and_good_judge_does() -> None:
    gold = gold_table()
    verdicts = pl.concat([judge_rows("coin", gold, 0.5, 1), judge_rows("good", gold, 0.85, 2)])
    rel = judge_reliability(verdicts, gold, ["coin", "good"])
    assert rel["coin"].accuracy.low < 0.5 < rel["coin"].accuracy.high  # type: ignore[operator]
    assert vote_weight(rel["coin"]) == 0.0
    assert rel["good"].accuracy.value == pytest.approx(0.85, abs=0.05)
    a = rel["good"].accuracy.value
    assert vote_weight(rel["good"]) == pytest.approx(math.log(a / (1 - a)))  # type: ignore[operator]


def test_few_perfect_pairs_are_not_enough_for_a_vote() -> None:
    three = Reliability(wilson(3, 3), 1.0, 3, 3)
    ten = Reliability(wilson(10, 10), 1.0, 10, 10)
    assert vote_weight(three) == 0.0
    assert vote_weight(ten) == pytest.approx(math.log(0.99 / 0.01))  # clipped at 0.99
    assert vote_weight(ten, min_low=0.8) == 0.0


def test_undecided_verdicts_lower_coverage_not_accuracy() -> None:
    gold = pl.DataFrame(
        {"pair_id": ["a", "b", "c", "d"], "verdict": ["chosen", "rejected", "chosen", "chosen"]}
    )
    verdicts = pl.DataFrame(
        {
            "pair_id": ["a", "b", "c", "zzz"],
            "judge": ["j", "j", "j", "j"],
            "verdict": ["chosen", "rejected", "tie", "rejected"],
        }
    )
    rel = judge_reliability(verdicts, gold, ["j", "silent"])
    assert rel["j"].decided == 2 and rel["j"].total == 4
    assert rel["j"].coverage == 0.5
    assert rel["j"].accuracy.value == 1.0
    assert rel["silent"].accuracy == Estimate(None, None, None, 0)
    assert rel["silent"].coverage == 0.0
    assert vote_weight(rel["silent"]) == 0.0


def test_a_self_contradicting_judge_is_undecided() -> None:
    gold = pl.DataFrame({"pair_id": ["a"], "verdict": ["chosen"]})
    verdicts = pl.DataFrame({"pair_id": ["a", "a"], "judge": ["j", "j"], "verdict": ["chosen", "rejected"]})
    assert judge_reliability(verdicts, gold, ["j"])["j"].decided == 0


def test_rm_reliability_treats_exact_half_as_undecided() -> None:
    rel = rm_reliability(np.array([0.9, 0.6, 0.5, 0.2]))
    assert (rel.decided, rel.total, rel.coverage) == (3, 4, 0.75)
    assert rel.accuracy.value == pytest.approx(2 / 3)
    assert rm_reliability(np.array([])).accuracy.n == 0


def test_is_reliable_uses_the_lower_bound() -> None:
    assert is_reliable(wilson(90, 100), 0.6)
    assert not is_reliable(wilson(13, 20), 0.6)  # 0.65 observed, but the CI reaches below 0.6
    assert not is_reliable(Estimate(None, None, None, 0), 0.0)


def test_weighted_vote_score_counts_only_weighted_voters() -> None:
    verdicts = pl.DataFrame(
        {
            "pair_id": ["p1", "p1", "p1", "p2", "p2", "p3"],
            "judge": ["a", "b", "coin", "a", "b", "coin"],
            "verdict": ["chosen", "rejected", "rejected", "tie", "rejected", "chosen"],
        }
    )
    scores = weighted_vote_score(verdicts, {"a": 2.0, "b": 0.5, "coin": 0.0})
    assert scores["pair_id"].to_list() == ["p1", "p2", "p3"]
    assert scores["score"].to_list() == pytest.approx([1.5, -0.5, 0.0])
    assert scores["voters"].to_list() == [2, 1, 0]


def test_reliability_serialises() -> None:
    rel = rm_reliability(np.array([0.9, 0.1]))
    assert rel.to_dict() == {"accuracy": wilson(1, 2).to_dict(), "coverage": 1.0, "decided": 2, "total": 2}
