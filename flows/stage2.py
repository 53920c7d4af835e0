"""Stage 2: large scale, no humans (method.md).

Filter A: pairs the current best RM already gets right are not relabeled; the rest go to the
judges (with retrieved human-labeled examples in their prompts). Filter B: a gold RM trained on
the train part of the human-verified data; a pair keeps its original label unless reliable
evidence (the gold RM, or every reliable witness among the judges and the best RM) speaks
against it. Discarded pairs are recycled flipped only when the calibrated probability that their
label is wrong is high enough. Every source of evidence is measured on evaluation gold first,
and a stage with no reliable evidence abstains. Every decision is a row of the `decisions`
table; stage2/summary.json marks the stage done.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from prefect import flow, get_run_logger

from flows.gold_parts import gold_part
from flows.labeling import judge_configs, judge_votes, read_votes
from flows.loop_state import (
    STAGE2_DIR,
    active_ids,
    completed_rounds,
    labeled_ids,
    pool_counts,
    round_dir,
    round_summaries,
    step,
)
from flows.round_steps import RM_MODEL, rm_brief
from flows.scoring import score_in_shards, scores_of
from flows.stage2_trust import stage2_trust
from flows.tasks import train_rm_task
from flows.trust import measure_judges, measure_rm, per_judge_verdicts, vote_scores
from pipeline.consistency import decisions_table, filter_a, final_decisions
from pipeline.gates import gated_stage2_decisions
from pipeline.store import Workspace
from schemas.config import SynprefConfig
from schemas.errors import InputError

GOLD_RM_MODEL = "gold-rm"


def best_round(summaries: list[dict[str, Any]]) -> int:
    """The round whose RM scored best on evaluation gold (the latest one on ties)."""
    if not summaries:
        raise InputError("stage 2 needs at least one completed stage-1 round")
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
    gold_train, gold_eval = gold_part(ws, "train"), gold_part(ws, "eval")
    if gold_train.height == 0:
        raise InputError("stage 2 needs human-verified gold labels to train the gold RM")
    eval_ids = gold_eval["pair_id"].to_list()

    # The gold RM: trained only on the train part of the human-verified data.
    gold_rm = f"{STAGE2_DIR}/gold-rm"
    trained = step(ws, STAGE2_DIR, "gold-rm", lambda: train_rm_task(
        ws.uri, config.rm, gold_train, None, gold_rm))
    shards = {"shard_rows": loop.shard_rows, "max_parallel": loop.max_parallel_shards}
    step(ws, STAGE2_DIR, "score-best", lambda: score_in_shards(
        ws, f"{round_dir(best)}/rm", candidates + eval_ids, best, RM_MODEL, **shards))
    step(ws, STAGE2_DIR, "score-gold", lambda: score_in_shards(
        ws, gold_rm, candidates + eval_ids, round_, GOLD_RM_MODEL, **shards))
    best_scores = scores_of(ws, best, RM_MODEL, candidates)
    gold_scores = scores_of(ws, round_, GOLD_RM_MODEL, candidates)

    # What evaluation gold says of each piece of evidence: both RMs and the judges' weighted vote.
    judges = judge_configs(config, gold_rm)
    measured = {
        "gold": step(ws, STAGE2_DIR, "gold-rm-eval", lambda: measure_rm(ws, round_, GOLD_RM_MODEL)),
        "best": step(ws, STAGE2_DIR, "best-rm-eval", lambda: measure_rm(ws, best, RM_MODEL)),
        "judges": step(ws, STAGE2_DIR, "reliability", lambda: measure_judges(
            ws, config, judges, round_, loop.seed + round_)),
    }
    trust = stage2_trust(ws, config, measured, best_scores, gold_scores, best, round_)

    # Filter A: only pairs the best RM gets wrong (or is unsure of) go to the judges.
    relabel = (
        filter_a(best_scores, round_, threshold).filter(pl.col("decision") == "relabel")
        .join(best_scores, on="pair_id").sort(["p", "pair_id"])
    )
    if config.stage2.max_judged is not None:
        relabel = relabel.head(config.stage2.max_judged)
    to_judge = relabel["pair_id"].to_list()
    # Judges that earned no vote on evaluation gold are not asked: their verdicts would decide nothing.
    voting = [j for j in judges if j.name in measured["judges"]["voting_judges"]]
    # Rule verifiers that earned a vote check every candidate, whatever filter A says: a pair
    # with a reference answer (or unit tests, or a multiple-choice key) is decided by rule, as
    # R1V2's hybrid reward does; rules abstain on pairs they cannot check, and cost no model.
    rules = [j for j in voting if j.kind == "rule"]
    judged_ids = sorted(set(to_judge) | set(candidates)) if rules else to_judge

    def judge_step() -> dict[str, Any]:
        shard = {"shard_rows": loop.shard_rows, "max_parallel": loop.max_parallel_shards}
        seed = loop.seed + round_
        models = [j for j in voting if j.kind != "rule"]
        if models:
            judge_votes(ws, models, config.embed, to_judge, round_, seed, **shard)
        checked = judge_votes(ws, rules, config.embed, candidates, round_, seed, **shard) if rules else None
        return {"judged": len(to_judge) if voting else 0,
                "rule_checked": int((checked["verdict"].is_not_null()).sum()) if checked is not None else 0,
                "voting_judges": [j.name for j in voting]}

    step(ws, STAGE2_DIR, "judge", judge_step)
    weights = {name: rel["weight"] for name, rel in measured["judges"]["judges"].items()}
    verdicts = per_judge_verdicts(ws, [j.name for j in judges], judged_ids, round_)
    votes = vote_verdicts(vote_scores(verdicts, weights, judged_ids))
    # A pair filter A kept and no rule could check has no vote, as before rules checked everything.
    votes = votes.filter(pl.col("pair_id").is_in(to_judge) | (pl.col("voters") > 0))

    # Filter B and flip-recycling, every outcome gated and recorded with its reason.
    decisions = gated_stage2_decisions(best_scores, gold_scores, votes, round_, trust.gates,
                                       recycle=config.stage2.recycle_flips, threshold=threshold)
    ws.append("decisions", decisions_table(decisions), unique_key=["pair_id", "filter", "round"])
    final = final_decisions(decisions).group_by("decision").len().sort("decision")
    outcome = dict(zip(final["decision"].to_list(), final["len"].to_list(), strict=True))
    summary = {
        "round": round_,
        "best_round": best,
        "candidates": len(candidates),
        "relabeled": len(to_judge),
        "rule_checked": len(candidates) if rules else 0,
        "outcome": outcome,
        "gold_rm": rm_brief(trained),
        "judges": {"judged": len(to_judge) if voting else 0, "voted": int((votes["voters"] > 0).sum()),
                   "agreement": _agreement(read_votes(ws, judges, to_judge, round_, weights)),
                   "voting_judges": measured["judges"]["voting_judges"]},
        "counts": stage2_counts(pool_counts(ws), outcome),
        "trust": trust.summary(outcome, len(candidates)),
    }
    ws.write_json(f"{STAGE2_DIR}/summary.json", summary)
    get_run_logger().info("stage 2: %s", outcome)
    for warning in summary["trust"]["warnings"]:
        get_run_logger().warning("stage 2: %s", warning)
    return summary


def vote_verdicts(scored: pl.DataFrame) -> pl.DataFrame:
    """(pair_id, verdict, score, voters): the weighted vote's sign as a verdict (tie at 0)."""
    return scored.with_columns(
        verdict=pl.when(pl.col("voters") == 0).then(pl.lit(None, dtype=pl.String))
        .when(pl.col("score") > 0).then(pl.lit("chosen"))
        .when(pl.col("score") < 0).then(pl.lit("rejected"))
        .otherwise(pl.lit("tie")))


def _agreement(votes: pl.DataFrame) -> float | None:
    """Mean agreement among the judges that earned a vote (None when none did)."""
    if votes.height == 0:
        return None
    return float(votes["agreement"].mean())  # type: ignore[arg-type]


def stage2_counts(pool: dict[str, int], outcome: dict[str, int]) -> dict[str, int]:
    """Pool composition after stage 2: every candidate is kept (by filter B or because it abstained:
    the stored label stays), flipped or dropped."""
    return pool | {"kept": outcome.get("keep", 0) + outcome.get("abstain", 0),
                   "abstained": outcome.get("abstain", 0), "flipped": outcome.get("flip", 0), "unlabeled": 0,
                   "dropped": pool["dropped"] + outcome.get("drop", 0)}
