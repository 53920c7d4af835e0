"""From raw judgments to one verdict per pair: self-consistency within a model, then a vote.

1. Within a judge, every valid row (samples x orders) is one vote; the strict majority of chosen /
   rejected / tie wins, a draw is a tie. A judge whose majority in one candidate order is the
   opposite of its majority in the other flipped with the order: the pair is flagged
   position-inconsistent (with equal samples per order, such a judge ties).
2. Across judges, each judge's verdict carries its weight (default 1); the strict heaviest
   verdict wins, a draw is a tie. Judges that only produced invalid rows, or abstained, do not vote.
"""

from __future__ import annotations

import json

import polars as pl

from schemas.labels import Verdict

DECIDED = [Verdict.chosen.value, Verdict.rejected.value, Verdict.tie.value]
RESULT_SCHEMA = {
    "pair_id": pl.String,
    "verdict": pl.String,
    "agreement": pl.Float64,
    "position_inconsistent": pl.Boolean,
    "votes": pl.String,
}


def _strict_max(a: pl.Expr, b: pl.Expr, c: pl.Expr) -> pl.Expr:
    """chosen / rejected / tie for whichever of (a, b, c) is strictly largest, else tie."""
    return (
        pl.when((a > b) & (a > c)).then(pl.lit(Verdict.chosen.value))
        .when((b > a) & (b > c)).then(pl.lit(Verdict.rejected.value))
        .otherwise(pl.lit(Verdict.tie.value))
    )


def judge_verdicts(judgments: pl.DataFrame) -> pl.DataFrame:
    """One row per (pair_id, judge): its self-consistent verdict and whether it flipped with order.

    `flipped`: the judge saw both orders and its majority in one order is `chosen` while in the
    other it is `rejected`. Majorities are compared, not sample i of one order with sample i of
    the other: sampled answers are independent draws, so pairing them by index means nothing.
    """
    valid = judgments.filter(pl.col("verdict").is_in(DECIDED))
    per_order = (
        valid.group_by("pair_id", "judge", "order")
        .agg(
            n_chosen=(pl.col("verdict") == Verdict.chosen.value).sum(),
            n_rejected=(pl.col("verdict") == Verdict.rejected.value).sum(),
            n_tie=(pl.col("verdict") == Verdict.tie.value).sum(),
        )
        .with_columns(majority=_strict_max(pl.col("n_chosen"), pl.col("n_rejected"), pl.col("n_tie")))
    )
    flips = (
        per_order.group_by("pair_id", "judge")
        .agg(
            both_orders=pl.col("order").n_unique() == 2,
            chosen_somewhere=(pl.col("majority") == Verdict.chosen.value).any(),
            rejected_somewhere=(pl.col("majority") == Verdict.rejected.value).any(),
        )
        .with_columns(
            flipped=pl.col("both_orders") & pl.col("chosen_somewhere") & pl.col("rejected_somewhere"))
        .select("pair_id", "judge", "both_orders", "flipped")
    )
    counts = valid.group_by("pair_id", "judge").agg(
        n_chosen=(pl.col("verdict") == Verdict.chosen.value).sum(),
        n_rejected=(pl.col("verdict") == Verdict.rejected.value).sum(),
        n_tie=(pl.col("verdict") == Verdict.tie.value).sum(),
        mean_margin=pl.col("margin").mean(),
    )
    return (
        counts.join(flips, on=["pair_id", "judge"], how="left")
        .with_columns(
            verdict=_strict_max(pl.col("n_chosen"), pl.col("n_rejected"), pl.col("n_tie")),
            both_orders=pl.col("both_orders").fill_null(False),
            flipped=pl.col("flipped").fill_null(False),
        )
        .sort("pair_id", "judge")
    )


def aggregate_votes(judgments: pl.DataFrame, weights: dict[str, float] | None = None) -> pl.DataFrame:
    """pair_id, verdict, agreement (winning weight / voting weight), position_inconsistent, votes (JSON).

    Pairs whose judgments are all invalid come out `invalid` with agreement 0.
    """
    if judgments.is_empty():
        return pl.DataFrame(schema=RESULT_SCHEMA)
    weights = weights or {}
    per_judge = judge_verdicts(judgments)
    judges = per_judge["judge"].unique().to_list()
    # A join, not replace_strict: with no decided judge the empty mapping would leave `w` a String.
    judge_weights = pl.DataFrame({"judge": judges, "w": [float(weights.get(j, 1.0)) for j in judges]},
                                 schema={"judge": pl.String, "w": pl.Float64})
    per_judge = per_judge.join(judge_weights, on="judge", how="left", maintain_order="left")
    voted = (
        per_judge.group_by("pair_id")
        .agg(
            w_chosen=(pl.col("w") * (pl.col("verdict") == Verdict.chosen.value)).sum(),
            w_rejected=(pl.col("w") * (pl.col("verdict") == Verdict.rejected.value)).sum(),
            w_tie=(pl.col("w") * (pl.col("verdict") == Verdict.tie.value)).sum(),
            w_total=pl.col("w").sum(),
            position_inconsistent=pl.col("flipped").any(),
            judges=pl.col("judge"),
            verdicts=pl.col("verdict"),
        )
        .with_columns(verdict=_strict_max(pl.col("w_chosen"), pl.col("w_rejected"), pl.col("w_tie")))
        .with_columns(
            agreement=pl.when(pl.col("w_total") > 0)
            .then(pl.max_horizontal("w_chosen", "w_rejected", "w_tie") / pl.col("w_total"))
            .otherwise(0.0),
        )
    )
    votes = [json.dumps(dict(zip(j, v, strict=True)), sort_keys=True)
             for j, v in zip(voted["judges"].to_list(), voted["verdicts"].to_list(), strict=True)]
    decided = voted.with_columns(votes=pl.Series(votes, dtype=pl.String)).select(list(RESULT_SCHEMA))
    undecided_rows = judgments.join(decided.select("pair_id"), on="pair_id", how="anti")
    undecided = (
        undecided_rows.group_by("pair_id")
        .agg(judges=pl.col("judge").unique().sort())
        .with_columns(
            verdict=pl.lit(Verdict.invalid.value),
            agreement=pl.lit(0.0),
            position_inconsistent=pl.lit(False),
            votes=pl.col("judges").map_elements(
                lambda js: json.dumps({j: Verdict.invalid.value for j in js}, sort_keys=True),
                return_dtype=pl.String),
        )
        .select(list(RESULT_SCHEMA))
    )
    return pl.concat([decided, undecided]).cast(RESULT_SCHEMA).sort("pair_id")  # type: ignore[arg-type]


def judge_agreement(judgments: pl.DataFrame) -> pl.DataFrame:
    """judge_a, judge_b, pairs (both decided), agreement (share with the same verdict)."""
    per_judge = judge_verdicts(judgments).select("pair_id", "judge", "verdict")
    joined = per_judge.join(per_judge, on="pair_id", suffix="_b").filter(pl.col("judge") < pl.col("judge_b"))
    return (
        joined.group_by(judge_a="judge", judge_b="judge_b")
        .agg(pairs=pl.len(), agreement=(pl.col("verdict") == pl.col("verdict_b")).mean())
        .sort("judge_a", "judge_b")
    )


def position_consistency(judgments: pl.DataFrame) -> pl.DataFrame:
    """Per judge: pairs seen in both orders, how many flipped, and the rate."""
    per_judge = judge_verdicts(judgments).filter(pl.col("both_orders"))
    return (
        per_judge.group_by("judge")
        .agg(pairs=pl.len(), inconsistent=pl.col("flipped").sum())
        .with_columns(rate=pl.col("inconsistent") / pl.col("pairs"))
        .sort("judge")
    )
