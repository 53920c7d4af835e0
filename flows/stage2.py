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

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.gold_parts import gold_part
from flows.judging import Stage2Judging, judge_partitions
from flows.labeling import judge_configs
from flows.loop_state import STAGE2_DIR, completed_rounds, pool_counts, round_dir, round_summaries, step
from flows.partition_tasks import pids, run_partitions, run_task, stage2_partition_task
from flows.round_steps import RM_MODEL, rm_brief
from flows.scoring import score_partitions
from flows.stage2_trust import stage2_trust
from flows.tasks import train_rm_task
from flows.trust import measure_judges, measure_rm
from pipeline.parts import discard
from pipeline.score_stage import ScoreStage
from pipeline.stage2_stage import (
    CANDIDATES,
    CandidateStage,
    DecideStage,
    Route,
    candidate_partitions,
    label_counts,
    route_cutoff,
    vote_verdicts,
)
from pipeline.store import Workspace
from schemas.config import SynprefConfig
from schemas.errors import InputError

GOLD_RM_MODEL = "gold-rm"
__all__ = ["GOLD_RM_MODEL", "best_round", "stage2_counts", "stage2_flow", "vote_verdicts"]


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
    gold_train = gold_part(ws, "train")
    if gold_train.height == 0:
        raise InputError("stage 2 needs human-verified gold labels to train the gold RM")
    # Every task of stage 2 works on one pool partition (`loop.shard_rows` rows), planned from the
    # pool's manifest; the driver holds receipts and counts, never the candidates. The candidates
    # (active, unlabeled) and evaluation gold are written per partition as a table first.
    parallel = loop.max_parallel_shards
    selected = step(ws, STAGE2_DIR, "candidates", lambda: select_candidates(ws, loop.shard_rows, parallel))
    indices = [p.index for p in candidate_partitions(ws)]  # a resumed run keeps them

    # The gold RM: trained only on the train part of the human-verified data.
    gold_rm = f"{STAGE2_DIR}/gold-rm"
    trained = step(ws, STAGE2_DIR, "gold-rm", lambda: train_rm_task(
        ws.uri, config.rm, gold_train, None, gold_rm))
    step(ws, STAGE2_DIR, "score-best", lambda: score_partitions(
        ws, ScoreStage(f"{round_dir(best)}/rm", best, RM_MODEL, "stage2"), max_parallel=parallel))
    step(ws, STAGE2_DIR, "score-gold", lambda: score_partitions(
        ws, ScoreStage(gold_rm, round_, GOLD_RM_MODEL, "stage2"), max_parallel=parallel))

    # What evaluation gold says of each piece of evidence: both RMs and the judges' weighted vote.
    judges = judge_configs(config, gold_rm)
    measured = {
        "gold": step(ws, STAGE2_DIR, "gold-rm-eval", lambda: measure_rm(ws, round_, GOLD_RM_MODEL)),
        "best": step(ws, STAGE2_DIR, "best-rm-eval", lambda: measure_rm(ws, best, RM_MODEL)),
        "judges": step(ws, STAGE2_DIR, "reliability", lambda: measure_judges(
            ws, config, judges, round_, loop.seed + round_)),
    }
    trust = stage2_trust(ws, config, measured, indices, best, round_)

    # Filter A: only pairs the best RM gets wrong (or is unsure of) go to the judges.
    cap = config.stage2.max_judged
    cutoff = None if cap is None else run_task(cutoff_task, ws.uri, indices, best, threshold, cap)
    route = Route(threshold, cutoff)
    # Judges that earned no vote on evaluation gold are not asked: their verdicts would decide nothing.
    voting = [j for j in judges if j.name in measured["judges"]["voting_judges"]]
    # Rule verifiers that earned a vote check every candidate, whatever filter A says: a pair
    # with a reference answer (or unit tests, or a multiple-choice key) is decided by rule, as
    # R1V2's hybrid reward does; rules abstain on pairs they cannot check, and cost no model.
    rules = tuple(j for j in voting if j.kind == "rule")
    judging = Stage2Judging(tuple(j for j in voting if j.kind != "rule"), rules, config.embed, round_,
                            loop.seed + round_, best, RM_MODEL, route)

    def judge_step() -> dict[str, Any]:
        judged = judge_partitions(ws, judging, max_parallel=parallel) if voting else {}
        return {"judged": judged.get("judged", 0), "rule_checked": judged.get("rule_checked", 0),
                "voting_judges": [j.name for j in voting], "shards": judged.get("shards", 0),
                "worker_pids": judged.get("worker_pids", [])}

    step(ws, STAGE2_DIR, "judge", judge_step)

    # Filter B and flip-recycling, every outcome gated and recorded with its reason, per partition.
    weights = {name: rel["weight"] for name, rel in measured["judges"]["judges"].items()}
    decide = DecideStage(round_, best, RM_MODEL, GOLD_RM_MODEL, route, trust.gates,
                         tuple(j.name for j in judges), weights, rules_checked_all=bool(rules),
                         recycle=config.stage2.recycle_flips)
    decided = decide_partitions(ws, decide, parallel)
    outcome = decided["outcome"]
    summary = {
        "round": round_,
        "best_round": best,
        "candidates": selected["candidates"],
        "relabeled": decided["relabeled"],
        "rule_checked": selected["candidates"] if rules else 0,
        "outcome": outcome,
        "gold_rm": rm_brief(trained),
        "judges": {"judged": decided["relabeled"] if voting else 0, "voted": decided["voted"],
                   "agreement": decided["agreement"],
                   "voting_judges": measured["judges"]["voting_judges"]},
        "counts": stage2_counts(composition(ws, selected), outcome),
        "trust": trust.summary(outcome, selected["candidates"]),
    }
    ws.write_json(f"{STAGE2_DIR}/summary.json", summary)
    get_run_logger().info("stage 2: %s", outcome)
    for warning in summary["trust"]["warnings"]:
        get_run_logger().warning("stage 2: %s", warning)
    return summary


@task(name="stage2-route-cutoff", cache_policy=NO_CACHE)
def cutoff_task(ws_uri: str, partitions: list[int], best: int, threshold: float,
                max_judged: int) -> tuple[float, str] | None:
    """Filter A's cap (stage2.max_judged) as a (p, pair_id) cutoff, found in a task."""
    return route_cutoff(Workspace(ws_uri), partitions, best, RM_MODEL, threshold, max_judged)


@task(name="stage2-label-counts", cache_policy=NO_CACHE)
def label_counts_task(ws_uri: str) -> dict[str, int]:
    return label_counts(Workspace(ws_uri))


def composition(ws: Workspace, selected: dict[str, Any]) -> dict[str, int]:
    """The pool's gold / silver / unlabeled / dropped counts (flows.loop_state.pool_counts) from
    the candidates step's receipts and a task's distinct counts of the label tables."""
    if "unlabeled" not in selected:  # selected by an older synpref
        return pool_counts(ws)
    counts = run_task(label_counts_task, ws.uri)
    return {"gold": counts["gold"], "silver": counts["silver"], "unlabeled": int(selected["unlabeled"]),
            "dropped": counts["dropped"]}


def select_candidates(ws: Workspace, rows_per_partition: int, max_parallel: int) -> dict[str, Any]:
    """The candidates table by one task per pool partition, committed once; its counts."""
    stage = CandidateStage(rows_per_partition)
    receipts, _ = run_partitions(ws, stage2_partition_task, stage, stage.partitions(ws),
                                 max_parallel=max_parallel, table=CANDIDATES)
    try:
        counts = stage.commit(ws, receipts)
    except BaseException:
        discard(ws, CANDIDATES, [p for r in receipts for p in r["parts"]])
        raise
    return counts | {"rows_per_partition": rows_per_partition, "worker_pids": pids(receipts)}


def decide_partitions(ws: Workspace, stage: DecideStage, max_parallel: int) -> dict[str, Any]:
    """Stage 2's decisions by one task per partition of the candidates table and one commit of
    `decisions`; counts."""
    receipts, _ = run_partitions(ws, stage2_partition_task, stage, candidate_partitions(ws),
                                 max_parallel=max_parallel, table="decisions")
    try:
        counts = stage.commit(ws, receipts)
    except BaseException:
        discard(ws, "decisions", [p for r in receipts for p in r["parts"]])
        raise
    return counts | {"worker_pids": pids(receipts)}


def stage2_counts(pool: dict[str, int], outcome: dict[str, int]) -> dict[str, int]:
    """Pool composition after stage 2: every candidate is kept (by filter B or because it abstained:
    the stored label stays), flipped or dropped."""
    return pool | {"kept": outcome.get("keep", 0) + outcome.get("abstain", 0),
                   "abstained": outcome.get("abstain", 0), "flipped": outcome.get("flip", 0), "unlabeled": 0,
                   "dropped": pool["dropped"] + outcome.get("drop", 0)}
