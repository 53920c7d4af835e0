"""How often each judge (and an RM) is right on evaluation gold, and what its vote is worth.

We have gold, so a judge's weight comes from its measured accuracy rather than from an
unsupervised fit: crowd-kit's DawidSkene estimates confusion matrices by EM without labels,
which is what to use when nothing is known. With gold, the one-coin Dawid-Skene model has a
closed form: a judge right with probability a contributes log(a / (1 - a)) to the log-odds of
the label it votes for (the optimal weighted-majority rule for independent judges). A judge
whose accuracy interval includes chance gets no vote, so one noisy judge cannot move labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from pipeline.trust.intervals import Estimate, wilson

CHOSEN = "chosen"
REJECTED = "rejected"
DECIDED_VERDICTS = (CHOSEN, REJECTED)
MIN_ACCURACY_FOR_WEIGHT = 0.5
MAX_ACCURACY_FOR_WEIGHT = 0.99


@dataclass(frozen=True)
class Reliability:
    """Accuracy over the decided gold pairs, and how many gold pairs were decided at all."""

    accuracy: Estimate
    coverage: float
    decided: int
    total: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict for round summaries and reports."""
        return {
            "accuracy": self.accuracy.to_dict(),
            "coverage": self.coverage,
            "decided": self.decided,
            "total": self.total,
        }


def _reliability(correct: int, decided: int, total: int) -> Reliability:
    return Reliability(wilson(correct, decided), decided / total if total else 0.0, decided, total)


def judge_votes(verdicts: pl.DataFrame) -> pl.DataFrame:
    """One vote per (pair_id, judge): +1 chosen, -1 rejected, 0 undecided.

    Several rows for the same judge and pair (samples, both candidate orders) are summed and
    reduced to their sign, so a judge that contradicts itself counts as undecided.
    """
    return (
        verdicts.select(
            pl.col("pair_id").cast(pl.Utf8),
            pl.col("judge").cast(pl.Utf8),
            pl.when(pl.col("verdict") == CHOSEN)
            .then(1)
            .when(pl.col("verdict") == REJECTED)
            .then(-1)
            .otherwise(0)
            .alias("sign"),
        )
        .group_by(["pair_id", "judge"])
        .agg(pl.col("sign").sum().sign().cast(pl.Int64).alias("vote"))
    )


def judge_reliability(
    verdicts: pl.DataFrame, gold: pl.DataFrame, judges: list[str]
) -> dict[str, Reliability]:
    """Each judge's accuracy and coverage on `gold` (pair_id, verdict in chosen/rejected).

    `verdicts` has (pair_id, judge, verdict), verdicts relative to the stored orientation.
    Tie, invalid and missing verdicts are not decided: they lower coverage and are never
    counted wrong. Every judge in `judges` gets an entry, even one with no verdicts.
    """
    gold_votes = gold.select(
        pl.col("pair_id").cast(pl.Utf8),
        pl.when(pl.col("verdict") == CHOSEN).then(1).otherwise(-1).alias("gold_vote"),
    ).unique("pair_id")
    total = gold_votes.height
    scored = (
        judge_votes(verdicts)
        .filter(pl.col("vote") != 0)
        .join(gold_votes, on="pair_id", how="inner")
        .group_by("judge")
        .agg(pl.len().alias("decided"), (pl.col("vote") == pl.col("gold_vote")).sum().alias("correct"))
    )
    counts = {row["judge"]: (row["correct"], row["decided"]) for row in scored.iter_rows(named=True)}
    out: dict[str, Reliability] = {}
    for judge in judges:
        correct, decided = counts.get(judge, (0, 0))
        out[judge] = _reliability(int(correct), int(decided), total)
    return out


def rm_reliability(p_right: np.ndarray) -> Reliability:
    """An RM's reliability from P(gold orientation) per gold pair; exactly 0.5 (or NaN) is undecided."""
    p = np.asarray(p_right, dtype=float).ravel()
    decided_mask = np.isfinite(p) & (p != 0.5)
    return _reliability(int(np.sum(p[decided_mask] > 0.5)), int(decided_mask.sum()), int(p.size))


def is_reliable(est: Estimate, minimum: float) -> bool:
    """True when the interval's lower bound clears `minimum` (an unmeasured estimate never does)."""
    return est.low is not None and est.low >= minimum


def vote_weight(rel: Reliability, min_low: float = 0.5) -> float:
    """One-coin Dawid-Skene weight log(a / (1 - a)), a clipped to [0.5, 0.99].

    0.0 when nothing was measured or the accuracy's lower bound is at or below `min_low`:
    a judge that may be at chance gets no vote. The clip keeps one perfect-looking judge from
    outvoting every other one.
    """
    acc = rel.accuracy
    if acc.n == 0 or acc.value is None or acc.low is None or acc.low <= min_low:
        return 0.0
    a = min(max(acc.value, MIN_ACCURACY_FOR_WEIGHT), MAX_ACCURACY_FOR_WEIGHT)
    return math.log(a / (1.0 - a))


def weighted_vote_score(verdicts: pl.DataFrame, weights: dict[str, float]) -> pl.DataFrame:
    """(pair_id, score, voters): sum of w_j * vote_j over judges with w_j > 0.

    Positive score supports the stored label. `voters` counts the weighted judges that decided
    the pair, so an "agreement" figure can say how many judges actually voted. Every pair_id in
    `verdicts` appears, with score 0 and voters 0 when no weighted judge decided it.
    """
    active = {j: float(w) for j, w in weights.items() if w > 0}
    weight_table = pl.DataFrame(
        {"judge": list(active), "weight": list(active.values())},
        schema={"judge": pl.Utf8, "weight": pl.Float64},
    )
    pairs = verdicts.select(pl.col("pair_id").cast(pl.Utf8)).unique()
    scored = (
        judge_votes(verdicts)
        .join(weight_table, on="judge", how="inner")
        .group_by("pair_id")
        .agg(
            (pl.col("weight") * pl.col("vote")).sum().alias("score"),
            (pl.col("vote") != 0).sum().cast(pl.Int64).alias("voters"),
        )
    )
    return (
        pairs.join(scored, on="pair_id", how="left")
        .with_columns(pl.col("score").fill_null(0.0), pl.col("voters").fill_null(0))
        .sort("pair_id")
    )
