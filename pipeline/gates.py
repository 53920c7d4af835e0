"""Gates: the loop changes or drops a label only on evidence measured reliable on evaluation gold.

A piece of evidence (an RM's scores, the judges' weighted vote) counts only when its accuracy on
evaluation gold has a 95% lower bound at or above `stage2.min_reliability`. A flip also needs
the calibrated probability that the stored label is wrong (evidence calibrated on evaluation
gold, the pool's estimated noise rate as the prior) above `stage2.flip_confidence`. Otherwise
the stage abstains: the stored label stays, and the reason says so with the numbers.

Pure functions over polars frames, so every gate is tested on constructed cases.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

FEATURES = ("gold", "best", "judges")


@dataclass(frozen=True)
class Evidence:
    """One source of evidence and what evaluation gold says of it."""

    name: str
    accuracy: dict[str, Any]
    reliable: bool

    def describe(self) -> str:
        from pipeline.trust import Estimate

        if self.accuracy.get("value") is None:
            return f"{self.name} n/a (no evaluation gold decided)"
        return f"{self.name} {Estimate.from_dict(self.accuracy)}"


@dataclass(frozen=True)
class Trust:
    """The gates' inputs for one stage: evidence per feature, the joint calibration, the prior."""

    evidence: dict[str, Evidence]
    coef: dict[str, float]
    prior_wrong: float | None
    min_reliability: float
    flip_confidence: float
    notes: list[str] = field(default_factory=list)

    def reliable(self, feature: str) -> bool:
        ev = self.evidence.get(feature)
        return ev is not None and ev.reliable

    def unreliable_reasons(self) -> str:
        return "; ".join(f"{ev.describe()} < {self.min_reliability:.2f}"
                         for ev in self.evidence.values() if not ev.reliable)


def logit(p: pl.Expr) -> pl.Expr:
    q = p.clip(1e-6, 1 - 1e-6)
    return (q / (1 - q)).log()


def log_lr_expr(trust: Trust, columns: dict[str, pl.Expr]) -> pl.Expr:
    """Calibrated log-likelihood ratio (stored label right : wrong) over the reliable features."""
    total = pl.lit(0.0)
    for feature, expr in columns.items():
        if trust.reliable(feature) and trust.coef.get(feature):
            total = total + pl.lit(trust.coef[feature]) * expr.fill_null(0.0)
    return total


def posterior_wrong_expr(log_lr: pl.Expr, prior_wrong: float) -> pl.Expr:
    prior = min(max(prior_wrong, 1e-4), 0.5)
    return 1.0 / (1.0 + (log_lr - float(np.log(prior / (1 - prior)))).exp())


def gate_silver(votes: pl.DataFrame, trust: Trust) -> pl.DataFrame:
    """Silver labels from the judges' weighted vote, gated.

    `votes`: (pair_id, score, voters). Returns (pair_id, verdict, action, detail): `kept` where
    reliable judges agree with the stored label, `flipped` where the calibrated probability that
    it is wrong exceeds flip_confidence, `abstained` otherwise (the stored label stays).
    """
    if votes.height == 0:
        return pl.DataFrame(schema={"pair_id": pl.String, "verdict": pl.String, "action": pl.String,
                                    "detail": pl.String})
    judges = trust.evidence["judges"]
    if not judges.reliable:
        why = f"abstained: judges' vote gold-eval accuracy {judges.describe()} < {trust.min_reliability:.2f}"
        return votes.select(
            "pair_id", verdict=pl.lit("chosen"), action=pl.lit("abstained"),
            detail=pl.lit(json.dumps({"gate": why}, sort_keys=True)))
    prior = trust.prior_wrong if trust.prior_wrong is not None else 0.5
    frame = votes.with_columns(
        p_wrong=posterior_wrong_expr(pl.lit(trust.coef.get("judges", 0.0)) * pl.col("score"), prior))
    flip = (pl.col("score") < 0) & (pl.col("p_wrong") > trust.flip_confidence)
    action = (pl.when(pl.col("voters") == 0).then(pl.lit("abstained"))
              .when(pl.col("score") > 0).then(pl.lit("kept"))
              .when(flip).then(pl.lit("flipped"))
              .otherwise(pl.lit("abstained")))
    frame = frame.with_columns(action=action)
    details = [
        json.dumps({"gate": _silver_reason(a, pw, v, trust.flip_confidence), "score": round(s, 4),
                    "p_wrong": round(pw, 4), "voters": v, "prior_wrong": round(prior, 4)}, sort_keys=True)
        for a, pw, v, s in zip(frame["action"], frame["p_wrong"], frame["voters"], frame["score"],
                               strict=True)
    ]
    return frame.select(
        "pair_id",
        verdict=pl.when(pl.col("action") == "flipped").then(pl.lit("rejected")).otherwise(pl.lit("chosen")),
        action="action",
        detail=pl.Series(details, dtype=pl.String),
    )


def _silver_reason(action: str, p_wrong: float, voters: int, confidence: float) -> str:
    if action == "kept":
        return "reliable judges agree with the stored label"
    if action == "flipped":
        return f"flipped: P(stored label wrong) {p_wrong:.3f} > {confidence:.2f}"
    if voters == 0:
        return "abstained: no reliable judge decided the pair"
    return f"abstained: P(stored label wrong) {p_wrong:.3f} <= {confidence:.2f}"


def flip_precision(eval_log_lr: np.ndarray, prior_wrong: float, threshold: float) -> dict[str, Any]:
    """Expected precision of the flips a gate makes, from evaluation gold.

    `eval_log_lr`: calibrated log-LRs of the evaluation pairs in their gold orientation. Their
    flipped copies are known-wrong labels: the gate's true-positive rate is the share of those it
    would flip, its false-positive rate the share of right labels it would flip, and Bayes with
    the pool's noise rate turns both into precision.
    """
    from pipeline.trust import expected_precision, wilson

    x = np.asarray(eval_log_lr, dtype=np.float64)
    if x.size == 0:
        return {"value": None, "low": None, "high": None, "n": 0, "tpr": None, "fpr": None}
    prior = min(max(prior_wrong, 1e-4), 0.5)
    logit_prior = float(np.log(prior / (1 - prior)))
    wrong_flagged = 1 / (1 + np.exp(-x - logit_prior)) > threshold  # flipped copies: log-LR is -x
    right_flagged = 1 / (1 + np.exp(x - logit_prior)) > threshold
    tpr, fpr = wilson(int(wrong_flagged.sum()), x.size), wilson(int(right_flagged.sum()), x.size)
    precision = expected_precision(prior, tpr, fpr).to_dict()
    return precision | {"tpr": tpr.value, "fpr": fpr.value}


def gated_stage2_decisions(
    best_scores: pl.DataFrame,
    gold_scores: pl.DataFrame,
    votes: pl.DataFrame | None,
    round_: int,
    trust: Trust,
    *,
    recycle: bool,
    threshold: float = 0.5,
) -> pl.DataFrame:
    """Filters A, B and recycling for every candidate, each one gated on reliable evidence.

    `votes`: (pair_id, verdict, score) of the judges' weighted vote for the pairs filter A sent
    them. Filter B keeps a label unless a reliable source speaks against it (the gold RM
    disagreeing, or every reliable witness among the judges and the best RM disagreeing); with
    no reliable source it abstains. Recycling flips a discarded pair only when the calibrated
    probability that its label is wrong is above flip_confidence; otherwise the pair is dropped.
    """
    from pipeline.consistency import _decisions, _evidence, filter_a

    a = filter_a(best_scores, round_, threshold)
    if not trust.reliable("best"):
        note = (f" (routing only: {trust.evidence['best'].describe()} < {trust.min_reliability:.2f}, "
                "so 'already right' keeps no label)")
        a = a.with_columns(reason=pl.col("reason") + pl.lit(note))
    verdicts = votes.select("pair_id", "verdict") if votes is not None else None
    ev = _evidence(best_scores, gold_scores, verdicts)
    score = (votes.select("pair_id", "score") if votes is not None and votes.height
             else pl.DataFrame(schema={"pair_id": pl.String, "score": pl.Float64}))
    ev = ev.join(score, on="pair_id", how="left", maintain_order="left")
    gold_rel, best_rel, judges_rel = (pl.lit(trust.reliable(f)) for f in FEATURES)
    judged = pl.col("judges").is_in(["chosen", "rejected"])
    gold_against = gold_rel & (pl.col("p_gold") <= threshold)
    witnesses = (judges_rel & judged) | best_rel
    support = (judges_rel & (pl.col("judges") == "chosen")) | (best_rel & (pl.col("p_best") > threshold))
    discard = gold_against | (witnesses & ~support.fill_null(False))
    anything = gold_rel | witnesses
    evidence = pl.format("gold RM p={}, best RM p={}, judges={}", pl.col("p_gold").round(4),
                         pl.col("p_best").round(4), pl.col("judges").fill_null("none"))
    abstain_why = trust.unreliable_reasons() or "no reliable evidence on this pair"
    b = ev.with_columns(
        decision=pl.when(discard).then(pl.lit("discard")).when(anything).then(pl.lit("keep"))
        .otherwise(pl.lit("abstain")),
        reason=pl.when(discard & gold_against)
        .then(pl.format("reliable gold RM disagrees ({})", evidence))
        .when(discard)
        .then(pl.format("every reliable witness disagrees ({})", evidence))
        .when(anything)
        .then(pl.format("no reliable evidence against the label ({})", evidence))
        .otherwise(pl.format("abstained: {} ({})", pl.lit(abstain_why), evidence)),
    )
    parts = [a, _decisions(b, "B", round_)]
    if recycle:
        discarded = b.filter(pl.col("decision") == "discard")
        parts.append(_decisions(_recycle(discarded, trust), "recycle", round_))
    return pl.concat(parts, how="vertical")


def _recycle(discarded: pl.DataFrame, trust: Trust) -> pl.DataFrame:
    log_lr = log_lr_expr(trust, {"gold": logit(pl.col("p_gold")), "best": logit(pl.col("p_best")),
                                 "judges": pl.col("score")})
    prior = trust.prior_wrong
    if prior is None:
        return discarded.with_columns(
            decision=pl.lit("drop"),
            reason=pl.lit("not flipped: the pool's noise rate could not be estimated, so no flip is "
                          "calibrated"))
    frame = discarded.with_columns(p_wrong=posterior_wrong_expr(log_lr, prior))
    flip = pl.col("p_wrong") > trust.flip_confidence
    return frame.with_columns(
        decision=pl.when(flip).then(pl.lit("flip")).otherwise(pl.lit("drop")),
        reason=pl.when(flip)
        .then(pl.format("flipped: P(stored label wrong) {} > {} (prior {})", pl.col("p_wrong").round(4),
                        pl.lit(trust.flip_confidence), pl.lit(round(prior, 4))))
        .otherwise(pl.format("dropped, not flipped: P(stored label wrong) {} <= {} (prior {})",
                             pl.col("p_wrong").round(4), pl.lit(trust.flip_confidence),
                             pl.lit(round(prior, 4)))),
    )
