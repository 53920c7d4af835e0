"""Stage 2: large scale, no humans (method.md).

Filter A: pairs the current best RM already gets right are not relabeled; the rest go to the
judges (with retrieved human-labeled examples in their prompts). Filter B: a gold RM trained on
all human-verified data; a pair keeps its original label only if the gold RM agrees and either
the judges or the best RM agree. Discarded pairs may be recycled flipped. Every decision is a
row of the `decisions` table; stage2/summary.json marks the stage done.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from prefect import flow, get_run_logger

from flows.labeling import judge_configs, judge_votes, read_votes
from flows.loop_state import (
    STAGE2_DIR,
    active_ids,
    completed_rounds,
    labeled_ids,
    labels,
    pool_counts,
    round_dir,
    round_summaries,
    step,
    training_frame,
)
from flows.round_steps import RM_MODEL, rm_brief
from flows.scoring import score_in_shards, scores_of
from flows.tasks import train_rm_task
from pipeline.consistency import decisions_table, filter_a, final_decisions, stage2_decisions
from pipeline.store import Workspace
from schemas.config import SynprefConfig

GOLD_RM_MODEL = "gold-rm"


def best_round(summaries: list[dict[str, Any]]) -> int:
    """The round whose RM scored best on gold (the latest one on ties)."""
    if not summaries:
        raise ValueError("stage 2 needs at least one completed stage-1 round")
    return max(summaries, key=lambda s: (s.get("gold_accuracy") or 0.0, s["round"]))["round"]


@flow(name="stage2", log_prints=True)
def stage2_flow(config: SynprefConfig) -> dict[str, Any]:
    ws = Workspace(config.workspace)
    summary = ws.read_json(f"{STAGE2_DIR}/summary.json")
    if summary is not None:
        return summary
    loop, threshold = config.loop, config.stage2.threshold
    round_ = max(completed_rounds(ws), default=0) + 1
    best = best_round(round_summaries(ws))
    candidates = sorted(set(active_ids(ws)["pair_id"].to_list()) - labeled_ids(ws))
    gold = training_frame(labels(ws, "gold"))
    if gold.height == 0:
        raise ValueError("stage 2 needs human-verified gold labels to train the gold RM")

    # The gold RM: trained only on human-verified data.
    gold_rm = f"{STAGE2_DIR}/gold-rm"
    trained = step(ws, STAGE2_DIR, "gold-rm", lambda: train_rm_task(ws.uri, config.rm, gold, None, gold_rm))
    shards = {"shard_rows": loop.shard_rows, "max_parallel": loop.max_parallel_shards}
    step(ws, STAGE2_DIR, "score-best", lambda: score_in_shards(
        ws, f"{round_dir(best)}/rm", candidates, best, RM_MODEL, **shards))
    step(ws, STAGE2_DIR, "score-gold", lambda: score_in_shards(
        ws, gold_rm, candidates, round_, GOLD_RM_MODEL, **shards))
    best_scores = scores_of(ws, best, RM_MODEL, candidates)
    gold_scores = scores_of(ws, round_, GOLD_RM_MODEL, candidates)

    # Filter A: only pairs the best RM gets wrong (or is unsure of) go to the judges.
    relabel = (
        filter_a(best_scores, round_, threshold).filter(pl.col("decision") == "relabel")
        .join(best_scores, on="pair_id").sort(["p", "pair_id"])
    )
    if config.stage2.max_judged is not None:
        relabel = relabel.head(config.stage2.max_judged)
    to_judge = relabel["pair_id"].to_list()
    judges = judge_configs(config, gold_rm)
    step(ws, STAGE2_DIR, "judge", lambda: {
        "judged": judge_votes(ws, judges, config.embed, to_judge, round_, loop.seed + round_).height})
    votes = read_votes(ws, judges, to_judge, round_)

    # Filter B and flip-recycling, every outcome recorded with its reason.
    decisions = stage2_decisions(best_scores, gold_scores, votes, round_,
                                 recycle=config.stage2.recycle_flips, threshold=threshold)
    ws.append("decisions", decisions_table(decisions), unique_key=["pair_id", "filter", "round"])
    final = final_decisions(decisions).group_by("decision").len().sort("decision")
    outcome = dict(zip(final["decision"].to_list(), final["len"].to_list(), strict=True))
    summary = {
        "round": round_,
        "best_round": best,
        "candidates": len(candidates),
        "relabeled": len(to_judge),
        "outcome": outcome,
        "gold_rm": rm_brief(trained),
        "judges": {"judged": len(to_judge), "agreement": _mean(votes, "agreement")},
        "counts": stage2_counts(pool_counts(ws), outcome),
    }
    ws.write_json(f"{STAGE2_DIR}/summary.json", summary)
    get_run_logger().info("stage 2: %s", outcome)
    return summary


def stage2_counts(pool: dict[str, int], outcome: dict[str, int]) -> dict[str, int]:
    """Pool composition after stage 2: every candidate is kept, flipped or dropped."""
    return pool | {"kept": outcome.get("keep", 0), "flipped": outcome.get("flip", 0), "unlabeled": 0,
                   "dropped": pool["dropped"] + outcome.get("drop", 0)}


def _mean(frame: pl.DataFrame, column: str) -> float | None:
    if frame.height == 0 or column not in frame.columns:
        return None
    return float(frame[column].mean())  # type: ignore[arg-type]
