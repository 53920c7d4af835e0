"""The steps of a stage-1 round that are more than one call: batch choice, retrieval, summary."""

from __future__ import annotations

from typing import Any

import polars as pl

from flows.gold_parts import gold_part
from flows.loop_state import (
    gold_accuracy,
    pool_counts,
    round_dir,
    scores,
)
from pipeline.consistency import choose_priority_batch
from pipeline.partitions import plan_partitions
from pipeline.priority_stage import Batch, Gathered, PriorityStage
from pipeline.store import Workspace
from schemas.config import SynprefConfig

RM_MODEL = "rm"
LABELED_TABLES = ("gold", "silver", "verifications")
"""Pairs already looked at (flows.loop_state.labeled_ids): neither the round-1 batches nor retrieval
take them."""
RETRIEVED_SCHEMA = {"query_pair_id": pl.String, "pair_id": pl.String, "similarity": pl.Float64,
                    "rank": pl.Int64, "query_p": pl.Float64}


def choose_batches(ws: Workspace, config: SynprefConfig, round_: int) -> dict[str, Any]:
    """Round 1: the seed batch for humans and a bootstrap batch for the judges (silver).

    Later rounds take their pairs from retrieval, so they choose nothing here.
    """
    if round_ != 1:
        return {"human": [], "silver": []}
    from flows.partition_tasks import priority_partition_task, run_partitions

    loop = config.loop
    source_labels = loop.gold_from == "source-labels"
    # pairs a rule verifier decides (unit tests, a multiple-choice key, a math answer) skip the
    # human queue, as the method's pre-verification does: each task runs the rules over its
    # objective pairs first (cheap, no model)
    human_batch = Batch(loop.seed_size, loop.seed, human_labels_only=source_labels,
                        sources=tuple(loop.gold_sources) if source_labels else (), skip_verified=True)
    # the silver batch leaves out the humans' picks, so each task keeps that many more candidates
    silver_batch = Batch(loop.silver_seed_size + loop.seed_size, loop.seed + 1)
    stage = PriorityStage((human_batch, silver_batch), exclude_tables=LABELED_TABLES,
                          rules=tuple(j for j in config.judges if j.kind == "rule"), round=round_,
                          seed=loop.seed + round_)
    gathered = Gathered(stage)
    run_partitions(ws, priority_partition_task, stage, plan_partitions(ws, loop.shard_rows),
                   max_parallel=loop.max_parallel_shards, on_window=gathered.merge)
    human = choose_priority_batch(gathered.frames[0], loop.seed_size, loop.seed)["pair_id"].to_list()
    silver = choose_priority_batch(gathered.frames[1], loop.silver_seed_size, loop.seed + 1,
                                   exclude=set(human))["pair_id"].to_list()
    return {"human": human, "silver": silver, "tasks": gathered.tasks, "examined": gathered.examined,
            "pre_verified": gathered.verified}


def label_agreement(ws: Workspace, round_: int, part: str = "train") -> pl.DataFrame:
    """(pair_id, p) of the round's RM relative to each gold label of `part`: p > 0.5 means it agrees.

    Retrieval starts only from the train part: an evaluation pair never steers what is labeled.
    """
    gold = gold_part(ws, part)
    frame = gold.join(scores(ws, round_, RM_MODEL, gold["pair_id"]).select("pair_id", "p"), on="pair_id",
                      how="inner")
    return frame.select(
        "pair_id",
        p=pl.when(pl.col("verdict") == "chosen").then(pl.col("p")).otherwise(1.0 - pl.col("p")),
    ).sort("pair_id")


def retrieve_for_round(ws: Workspace, config: SynprefConfig, round_: int) -> dict[str, Any]:
    """Error-driven retrieval around gold pairs: k = k_max where the RM fails, fewer where it is right.

    The retrieved unlabeled pairs (one row each, nearest failing query first) are stored as
    `rounds/N/retrieved` for the judges and for the record. The search runs as one task per pool
    partition on the round's runner (pipeline/retrieve_stage.py) over the vectors the stage-1 flow
    embedded; each task leaves out the labeled pairs among its own ids.
    """
    from flows.partition_tasks import retrieve_partition_task, run_partitions
    from pipeline.retrieve import retrieve

    loop = config.loop

    def on_runner(stage: Any, partitions: list[Any], merge: Any) -> None:
        # the stage says what a task asks for: an image pool's combine tasks load CLIP
        run_partitions(ws, retrieve_partition_task, stage, partitions, max_parallel=loop.max_parallel_shards,
                       gpus=stage.gpus, on_window=merge)

    queries = label_agreement(ws, round_)
    hits, done = retrieve(ws, config.embed, queries, exclude_tables=LABELED_TABLES, k_max=loop.k_max,
                          index_cfg=config.index, embed=False, rows_per_partition=loop.shard_rows,
                          run_map=on_runner)
    if hits.height:
        hits = hits.join(queries.rename({"pair_id": "query_pair_id", "p": "query_p"}),
                         on="query_pair_id", how="left")
        hits = (
            hits.sort(["query_p", "rank", "similarity", "pair_id"], descending=[False, False, True, False])
            .unique("pair_id", keep="first", maintain_order=True)
            .head(config.loop.retrieve_max)
            .select(list(RETRIEVED_SCHEMA))
            .cast(RETRIEVED_SCHEMA)  # type: ignore[arg-type]
        )
    else:
        hits = pl.DataFrame(schema=RETRIEVED_SCHEMA)
    ws.replace(f"{round_dir(round_)}/retrieved", hits)
    failures = queries.filter(pl.col("p") <= 0.5).height
    return {
        "queries": queries.height,
        "failures": failures,
        "retrieved": hits.height,
        "pair_ids": hits["pair_id"].to_list(),
        "mean_similarity": float(hits["similarity"].mean()) if hits.height else None,  # type: ignore[arg-type]
        **{k: done[k] for k in ("tasks", "examined", "candidates", "unembedded", "worker_pids") if k in done},
    }


RM_FACTS = ("out", "kind", "base_model", "train_pairs", "gold_pairs", "gold_accuracy", "gold_loss",
            "best_epoch", "seconds", "pairs_per_second", "skipped")


def rm_brief(trained: dict[str, Any]) -> dict[str, Any]:
    """The facts of a training run worth a line in the round summary (the rest is in rm/train.json)."""
    return {k: trained[k] for k in RM_FACTS if k in trained}


def round_summary(ws: Workspace, config: SynprefConfig, round_: int, steps: dict[str, dict[str, Any]]
                  ) -> dict[str, Any]:
    """What rounds/N/summary.json holds: counts, evaluation-gold accuracy with its CI, retrieval,
    the judges' reliability and what the gates did."""
    evaluated = steps["rm-eval"]
    gold_eval = gold_part(ws, "eval")
    accuracy = gold_accuracy(ws, gold_eval, scores(ws, round_, RM_MODEL, gold_eval["pair_id"]))
    judged = [s for s in (steps["silver"], steps["judge"]) if s.get("judged")]
    total = sum(s["judged"] for s in judged)
    # Agreement among the judges that earned a vote, over the pairs they voted on.
    voted = [s for s in judged if s.get("voted") and s.get("agreement") is not None]
    n_voted = sum(s["voted"] for s in voted)
    agreement = sum(s["agreement"] * s["voted"] for s in voted) / n_voted if n_voted else None
    retrieval = {k: v for k, v in steps["retrieve"].items() if k not in ("pair_ids", "worker_pids")}
    return {
        "round": round_,
        "counts": pool_counts(ws),
        **accuracy,
        "gold_accuracy": evaluated["accuracy"]["value"],
        "gold_eval": {"accuracy": evaluated["accuracy"], "coverage": evaluated.get("coverage")},
        "rm": rm_brief(steps["rm"]),
        "gold_rm": rm_brief(steps["gold-rm"]),
        "human": steps["human"],
        "retrieval": retrieval,
        "judges": {
            "judged": total,
            "agreement": agreement,
            "voting_judges": steps["reliability"]["voting_judges"],
            "silver_seed": steps["silver"],
            "retrieved": steps["judge"],
        },
        "trust": round_trust(config, steps),
    }


def round_trust(config: SynprefConfig, steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The round's trust summary: gold split, RM and judge reliability, what the gates did, warnings."""
    from flows.trust import describe, judges_text, reliable

    minimum = config.stage2.min_reliability
    measured = steps["reliability"]
    gates = [s.get("gate") or {} for s in (steps["silver"], steps["judge"])]
    actions: dict[str, int] = {}
    for gate in gates:
        for action, n in (gate.get("actions") or {}).items():
            actions[action] = actions.get(action, 0) + n
    warnings = []
    if not reliable(steps["rm-eval"], minimum):
        warnings.append(f"the round's RM is not reliable: {describe('gold-eval accuracy', steps['rm-eval'])} "
                        f"< {minimum:.2f}; its scores decide nothing")
    if not reliable(measured, minimum):
        why = (describe("gold-eval accuracy", measured) if measured["voting_judges"]
               else f"no judge earned a vote ({judges_text(measured)})")
        warnings.append(f"the judges' vote is not reliable: {why}, lower bound < {minimum:.2f}; "
                        "silver keeps the stored labels (abstained)")
    precisions = [g.get("expected_flip_precision") for g in gates if g.get("expected_flip_precision")]
    return {
        "gold_split": steps["gold-split"] | ({"after_retrieval": steps["gold-split-retrieved"]}
                                             if "gold-split-retrieved" in steps else {}),
        "rm": {k: v for k, v in steps["rm-eval"].items() if k != "eval_logit"},
        "judges": measured["judges"],
        "ensemble": {k: v for k, v in measured["ensemble"].items() if k != "eval_score"},
        "silver": {"changed": actions.get("flipped", 0), "dropped": 0,
                   "abstained": actions.get("abstained", 0), "agreed": actions.get("kept", 0),
                   "expected_flip_precision": precisions[-1] if precisions else None},
        "min_reliability": minimum,
        "flip_confidence": config.stage2.flip_confidence,
        "warnings": warnings,
    }
