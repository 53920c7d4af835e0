"""What the loop knows about its own evidence, measured on evaluation gold every round.

Each round the judges vote on the evaluation part of gold (pairs nothing trains on), so every
judge's accuracy and coverage is measured out-of-sample with a 95% CI; a judge whose CI
includes 0.5 gets no vote, the others vote with log-odds weights, and the weighted vote is
calibrated on the same pairs. Reward models are measured the same way from their scores. The
results are plain JSON (rounds/N/steps/reliability.json, stage2/steps/reliability.json), so a
resumed run gates its labels on exactly the numbers the first run measured.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from flows.gold_parts import gold_part
from flows.judging import judge_in_shards
from flows.loop_state import scores
from pipeline.store import Workspace
from schemas.config import JudgeConfig, SynprefConfig
from schemas.labels import JUDGMENTS_SCHEMA

NO_EVIDENCE = {"value": None, "low": None, "high": None, "n": 0}


def per_judge_verdicts(ws: Workspace, judges: list[str], pair_ids: list[str], round_: int
                       ) -> pl.DataFrame:
    """(pair_id, judge, verdict) of each judge's self-consistent verdict on `pair_ids` in `round_`."""
    from pipeline.judges.aggregate import judge_verdicts

    empty = pl.DataFrame(schema={"pair_id": pl.String, "judge": pl.String, "verdict": pl.String})
    if not pair_ids or not judges or not ws.has_table("judgments"):
        return empty
    judgments = (
        ws.scan("judgments", schema=JUDGMENTS_SCHEMA)
        .filter((pl.col("round") == round_) & pl.col("pair_id").is_in(pair_ids)
                & pl.col("judge").is_in(judges))
        .collect()
    )
    if judgments.height == 0:
        return empty
    return judge_verdicts(judgments).select("pair_id", "judge", "verdict")


def vote_scores(verdicts: pl.DataFrame, weights: dict[str, float], pair_ids: list[str]) -> pl.DataFrame:
    """(pair_id, score, voters) for every pair of `pair_ids`: the reliability-weighted vote."""
    from pipeline.trust import weighted_vote_score

    scored = weighted_vote_score(verdicts, weights) if verdicts.height else pl.DataFrame(
        schema={"pair_id": pl.String, "score": pl.Float64, "voters": pl.Int64})
    frame = pl.DataFrame({"pair_id": pair_ids}, schema={"pair_id": pl.String})
    return frame.join(scored, on="pair_id", how="left").with_columns(
        pl.col("score").fill_null(0.0).cast(pl.Float64), pl.col("voters").fill_null(0).cast(pl.Int64))


def _oriented(frame: pl.DataFrame, gold: pl.DataFrame, column: str) -> np.ndarray:
    """`column` of the pairs in gold orientation: negated where the gold verdict is `rejected`."""
    joined = gold.join(frame, on="pair_id", how="inner").sort("pair_id")
    sign = np.where(joined["verdict"].to_numpy() == "rejected", -1.0, 1.0)
    return joined[column].to_numpy().astype(np.float64) * sign


def calibration(x_eval: np.ndarray) -> dict[str, Any]:
    """A symmetric Platt fit of one evidence feature on evaluation gold (coef 0 without data)."""
    from pipeline.trust import SymmetricPlatt

    if x_eval.size < 2 or not np.any(x_eval != 0):
        return {"coef": 0.0, "n": int(x_eval.size)}
    model = SymmetricPlatt().fit(x_eval.reshape(-1, 1))
    return {"coef": float(np.asarray(model.coef).ravel()[0]), "n": int(x_eval.size)}


def measure_judges(ws: Workspace, config: SynprefConfig, judges: list[JudgeConfig], round_: int,
                   seed: int) -> dict[str, Any]:
    """Every judge's accuracy and coverage on evaluation gold, its vote weight, and the weighted
    vote's own accuracy and calibration."""
    from pipeline.trust import judge_reliability, vote_weight, wilson

    gold_eval = gold_part(ws, "eval")
    eval_ids = gold_eval["pair_id"].to_list()
    judge_in_shards(ws, judges, config.embed, eval_ids, round_, seed, shard_rows=config.loop.shard_rows,
                    max_parallel=config.loop.max_parallel_shards)
    names = [j.name for j in judges]
    verdicts = per_judge_verdicts(ws, names, eval_ids, round_)
    reliability = judge_reliability(verdicts, gold_eval, names) if names else {}
    weights = {name: float(vote_weight(rel)) for name, rel in reliability.items()}
    votes = vote_scores(verdicts, weights, eval_ids)
    x = _oriented(votes, gold_eval, "score")
    decided = int(np.count_nonzero(x))
    accuracy = wilson(int(np.sum(x > 0)), decided)
    return {
        "gold_eval": len(eval_ids),
        "judges": {name: rel.to_dict() | {"weight": weights[name]} for name, rel in reliability.items()},
        "voting_judges": sorted(n for n, w in weights.items() if w > 0),
        "ensemble": {"accuracy": accuracy.to_dict(), "coverage": decided / len(eval_ids) if eval_ids else 0.0,
                     "calibration": calibration(x), "eval_score": x.tolist()},
    }


def measure_rm(ws: Workspace, round_: int, model: str) -> dict[str, Any]:
    """An RM's accuracy on evaluation gold from its stored scores, with its calibration."""
    from pipeline.trust import logit, rm_reliability

    gold_eval = gold_part(ws, "eval")
    p_right = _p_right(scores(ws, round_, model, gold_eval["pair_id"]).select("pair_id", "p"), gold_eval)
    x = logit(p_right)
    rel = rm_reliability(p_right)
    return {"model": model, "round": round_, **rel.to_dict(), "calibration": calibration(x),
            "eval_logit": x.tolist()}


def _p_right(frame: pl.DataFrame, gold: pl.DataFrame) -> np.ndarray:
    """An RM's p for the gold label's orientation: p, or 1 - p where gold says `rejected`."""
    p = gold.join(frame, on="pair_id", how="inner").sort("pair_id")
    return np.where(p["verdict"].to_numpy() == "rejected", 1.0 - p["p"].to_numpy(), p["p"].to_numpy())


def accuracy_of(measured: dict[str, Any]) -> dict[str, Any]:
    """The Estimate dict of a measurement (RM or judges' vote)."""
    if "ensemble" in measured:
        return measured["ensemble"]["accuracy"]
    return measured.get("accuracy", NO_EVIDENCE)


def reliable(measured: dict[str, Any] | None, minimum: float) -> bool:
    """The measurement's 95% lower bound is at or above `minimum`."""
    if not measured:
        return False
    low = accuracy_of(measured).get("low")
    return low is not None and low >= minimum


def judges_text(measured: dict[str, Any]) -> str:
    """Each judge's evaluation-gold accuracy and coverage, for reasons and warnings."""
    parts = []
    for name, rel in sorted(measured.get("judges", {}).items()):
        if rel["accuracy"].get("value") is None:
            parts.append(f"{name} decided 0 of {rel['total']}")
        else:
            parts.append(describe(name, rel))
    return "; ".join(parts) or "no judges"


def describe(name: str, measured: dict[str, Any] | None) -> str:
    """'best RM 0.512 [0.445, 0.579], n=120' for reasons and warnings."""
    from pipeline.gates import Evidence

    return Evidence(name, accuracy_of(measured or {}), False).describe()
