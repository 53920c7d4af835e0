"""Stage 2's evidence, weighed before any label moves: reliability, joint calibration, noise rate.

Each source of evidence (gold RM, best RM, the judges' weighted vote) was measured on evaluation
gold; the reliable ones are calibrated jointly on the same pairs (a symmetric Platt fit, since a
source's label is right for the gold orientation and wrong for its flip), the pool's label-noise
rate is estimated per source from the most reliable RM's out-of-sample scores on the candidates,
and that rate is the prior of every flip's posterior. The expected precision of the flips comes
from evaluation gold at the same threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.gold_parts import gold_part
from flows.round_steps import RM_MODEL
from flows.trust import describe, judges_text, reliable
from pipeline.gates import FEATURES, Evidence, Trust, flip_precision
from pipeline.score_stage import scored_among
from pipeline.stage2_stage import candidate_log_lr_counts, logit
from pipeline.store import Workspace
from schemas.config import SynprefConfig

GOLD_RM_MODEL = "gold-rm"
NAMES = {"gold": "gold RM", "best": "best RM", "judges": "judges' vote"}


@dataclass
class Stage2Trust:
    gates: Trust
    measured: dict[str, dict[str, Any]]
    noise: dict[str, Any]
    flip_precision: dict[str, Any] | None

    def summary(self, outcome: dict[str, int], candidates: int) -> dict[str, Any]:
        """The trust block of stage2/summary.json: what was measured and what the gates did."""
        changed = outcome.get("flip", 0)
        dropped = outcome.get("drop", 0)
        warnings = []
        unreliable = [f for f in FEATURES if not self.gates.reliable(f)]
        if len(unreliable) == len(FEATURES):
            warnings.append("stage 2 abstained: no evidence is reliable on evaluation gold ("
                            + self.gates.unreliable_reasons() + "); every stored label stays")
        elif unreliable:
            warnings.append("unreliable evidence left out of every decision: "
                            + "; ".join(self.gates.evidence[f].describe() for f in unreliable))
        if not self.noise.get("reliable"):
            warnings.append(f"the pool's label-noise rate cannot be estimated reliably: {self.noise['why']}")
        return {
            "evidence": {f: {"name": ev.name, "accuracy": ev.accuracy, "reliable": ev.reliable}
                         for f, ev in self.gates.evidence.items()},
            "judges": self.measured["judges"]["judges"],
            "calibration": self.gates.coef,
            "noise": self.noise,
            "prior_wrong": self.gates.prior_wrong,
            "labels": {"candidates": candidates, "changed": changed, "dropped": dropped,
                       "abstained": outcome.get("abstain", 0), "kept": outcome.get("keep", 0),
                       "changed_or_dropped_share": (changed + dropped) / candidates if candidates else 0.0},
            "expected_flip_precision": self.flip_precision,
            "min_reliability": self.gates.min_reliability,
            "flip_confidence": self.gates.flip_confidence,
            "warnings": warnings,
        }


def eval_features(ws: Workspace, round_: int, best: int, measured: dict[str, dict[str, Any]]) -> pl.DataFrame:
    """Evaluation gold with each feature in gold orientation: logit(p) of both RMs, the vote score."""
    from flows.trust import per_judge_verdicts, vote_scores

    gold = gold_part(ws, "eval")
    sign = pl.when(pl.col("verdict") == "rejected").then(-1.0).otherwise(1.0)
    frame = gold
    for feature, (rnd, model) in {"gold": (round_, GOLD_RM_MODEL), "best": (best, RM_MODEL)}.items():
        p = scored_among(ws, rnd, model, gold["pair_id"]).select("pair_id", pl.col("p").alias(feature))
        frame = frame.join(p, on="pair_id", how="left")
    weights = {name: rel["weight"] for name, rel in measured["judges"]["judges"].items()}
    eval_ids = gold["pair_id"].to_list()
    votes = vote_scores(per_judge_verdicts(ws, list(weights), eval_ids, round_), weights, eval_ids)
    frame = frame.join(votes.select("pair_id", pl.col("score").alias("judges")), on="pair_id", how="left")
    return frame.drop_nulls(["gold", "best"]).with_columns(
        pl.col("gold").map_batches(lambda s: pl.Series(logit(s.to_numpy()))) * sign,
        pl.col("best").map_batches(lambda s: pl.Series(logit(s.to_numpy()))) * sign,
        pl.col("judges").fill_null(0.0) * sign,
    ).sort("pair_id")


@task(name="stage2-noise-counts", retries=1, cache_policy=NO_CACHE)
def noise_counts_task(ws_uri: str, partition: int, round_: int, model: str, coef: float) -> pl.DataFrame:
    """One candidates partition's pairs counted by calibrated log-LR and source (a grid's worth of
    rows, whatever the partition's size)."""
    return candidate_log_lr_counts(Workspace(ws_uri), [partition], round_, model, coef)


@task(name="stage2-noise", retries=1, cache_policy=NO_CACHE)
def noise_task(counts: pl.DataFrame) -> dict[str, Any]:
    """The pool's label-noise rate per source, with its bootstrap CI, from the summed counts."""
    from pipeline.trust import noise_by_source_counts

    return {k: v.to_dict() for k, v in noise_by_source_counts(counts).items()}


def noise_by_partition(ws: Workspace, partitions: list[int], round_: int, model: str,
                       coef: float) -> dict[str, Any]:
    """The noise estimates of the candidates scored by `model`: one counting task per partition
    (all at once on the flow's runner), the counts added here in any order (integers on a grid),
    the estimate in one more task. The driver holds the grid's counts, never a pair."""
    from prefect.context import FlowRunContext

    from flows.partition_tasks import run_task
    from pipeline.trust import merge_counts

    args = (round_, model, coef)
    if FlowRunContext.get() is None:
        total = candidate_log_lr_counts(ws, partitions, *args)
    else:
        total = merge_counts([])
        for future in [noise_counts_task.submit(ws.uri, index, *args) for index in partitions]:
            total = merge_counts([total, future.result()])  # a grid's rows held, not one per partition
    return run_task(noise_task, total)  # type: ignore[no-any-return]


def stage2_trust(ws: Workspace, config: SynprefConfig, measured: dict[str, dict[str, Any]],
                 partitions: list[int], best: int, round_: int) -> Stage2Trust:
    """Evidence, joint calibration and noise prior of stage 2; `partitions`: the candidates
    table's partition indices."""
    from pipeline.trust import SymmetricPlatt

    minimum, confidence = config.stage2.min_reliability, config.stage2.flip_confidence
    evidence = {f: Evidence(NAMES[f], measured[f]["ensemble"]["accuracy"] if f == "judges"
                            else measured[f]["accuracy"], reliable(measured[f], minimum)) for f in FEATURES}
    if not evidence["judges"].reliable:
        evidence["judges"] = Evidence(f"judges' vote (per judge: {judges_text(measured['judges'])})",
                                      evidence["judges"].accuracy, False)
    features = eval_features(ws, round_, best, measured)
    usable = [f for f in FEATURES if evidence[f].reliable]
    coef: dict[str, float] = {}
    x_eval = np.zeros((features.height, 0))
    if usable and features.height >= 2:
        x_eval = features.select(usable).to_numpy().astype(np.float64)
        model = SymmetricPlatt().fit(x_eval)
        coef = dict(zip(usable, np.asarray(model.coef, dtype=np.float64).ravel().tolist(), strict=True))

    # The noise rate: the most reliable RM's calibrated scores on the candidates, per source.
    rms = [f for f in ("gold", "best") if evidence[f].reliable]
    noise: dict[str, Any] = {"reliable": False}
    if rms:
        rm = max(rms, key=lambda f: evidence[f].accuracy["low"])
        rm_coef = SymmetricPlatt().fit(features.select(rm).to_numpy().astype(np.float64)).coef
        scored_by = (round_, GOLD_RM_MODEL) if rm == "gold" else (best, RM_MODEL)
        by_source = noise_by_partition(ws, partitions, *scored_by, float(np.asarray(rm_coef).ravel()[0]))
        noise = {"reliable": True, "from": NAMES[rm], "by_source": by_source}
    else:
        noise["why"] = "no RM is reliable on evaluation gold (" + "; ".join(
            f"{describe(NAMES[f], measured[f])}" for f in ("gold", "best")) + f" < {minimum:.2f})"
        noise["by_source"] = {}
    prior = noise["by_source"].get("all", {}).get("value") if noise["reliable"] else None
    gates = Trust(evidence, coef, prior, minimum, confidence)
    precision = None
    if coef and prior is not None:
        log_lr = x_eval @ np.array([coef[f] for f in usable])
        precision = flip_precision(log_lr, prior, confidence)
    return Stage2Trust(gates, measured, noise, precision)
