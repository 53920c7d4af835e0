"""The steps of a stage-1 round that are more than one call: batch choice, retrieval, summary."""

from __future__ import annotations

from typing import Any

import polars as pl

from flows.labeling import gold_eligible
from flows.loop_state import (
    active_ids,
    gold_accuracy,
    labeled_ids,
    labels,
    pool_counts,
    round_dir,
    scores,
    training_frame,
    with_attributes,
)
from pipeline.consistency import choose_priority_batch
from pipeline.store import Workspace
from schemas.config import SynprefConfig

RM_MODEL = "rm"
RETRIEVED_SCHEMA = {"query_pair_id": pl.String, "pair_id": pl.String, "similarity": pl.Float64,
                    "rank": pl.Int64, "query_p": pl.Float64}


def choose_batches(ws: Workspace, config: SynprefConfig, round_: int) -> dict[str, Any]:
    """Round 1: the seed batch for humans and a bootstrap batch for the judges (silver).

    Later rounds take their pairs from retrieval, so they choose nothing here.
    """
    if round_ != 1:
        return {"human": [], "silver": []}
    loop = config.loop
    labeled = labeled_ids(ws)
    pool = with_attributes(ws, active_ids(ws))
    eligible = gold_eligible(ws, config) if loop.gold_from == "source-labels" else pool
    human = choose_priority_batch(
        with_attributes(ws, eligible), loop.seed_size, loop.seed, exclude=labeled
    )["pair_id"].to_list()
    silver = choose_priority_batch(
        pool, loop.silver_seed_size, loop.seed + 1, exclude=labeled | set(human)
    )["pair_id"].to_list()
    return {"human": human, "silver": silver}


def label_agreement(ws: Workspace, round_: int) -> pl.DataFrame:
    """(pair_id, p) of the round's RM relative to each gold label: p > 0.5 means it agrees."""
    gold = training_frame(labels(ws, "gold"))
    frame = gold.join(scores(ws, round_, RM_MODEL).select("pair_id", "p"), on="pair_id", how="inner")
    return frame.select(
        "pair_id",
        p=pl.when(pl.col("verdict") == "chosen").then(pl.col("p")).otherwise(1.0 - pl.col("p")),
    ).sort("pair_id")


def retrieve_for_round(ws: Workspace, config: SynprefConfig, round_: int) -> dict[str, Any]:
    """Error-driven retrieval around gold pairs: k = k_max where the RM fails, fewer where it is right.

    The retrieved unlabeled pairs (one row each, nearest failing query first) are stored as
    `rounds/N/retrieved` for the judges and for the record.
    """
    from pipeline.retrieve import retrieve_near_failures

    queries = label_agreement(ws, round_)
    hits = retrieve_near_failures(ws, config.embed, queries, exclude=labeled_ids(ws), k_max=config.loop.k_max)
    hits = pl.DataFrame(hits) if not isinstance(hits, pl.DataFrame) else hits
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
    }


RM_FACTS = ("out", "kind", "base_model", "train_pairs", "gold_pairs", "gold_accuracy", "gold_loss",
            "best_epoch", "seconds", "pairs_per_second", "skipped")


def rm_brief(trained: dict[str, Any]) -> dict[str, Any]:
    """The facts of a training run worth a line in the round summary (the rest is in rm/train.json)."""
    return {k: trained[k] for k in RM_FACTS if k in trained}


def round_summary(ws: Workspace, round_: int, steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What rounds/N/summary.json holds: counts, gold accuracy, retrieval and judge stats."""
    accuracy = gold_accuracy(ws, labels(ws, "gold"), scores(ws, round_, RM_MODEL))
    judged = [s for s in (steps["silver"], steps["judge"]) if s.get("judged")]
    total = sum(s["judged"] for s in judged)
    agreement = (
        sum(s["agreement"] * s["judged"] for s in judged) / total if total else None
    )
    retrieval = {k: v for k, v in steps["retrieve"].items() if k != "pair_ids"}
    return {
        "round": round_,
        "counts": pool_counts(ws),
        **accuracy,
        "rm": rm_brief(steps["rm"]),
        "gold_rm": rm_brief(steps["gold-rm"]),
        "human": steps["human"],
        "retrieval": retrieval,
        "judges": {
            "judged": total,
            "agreement": agreement,
            "silver_seed": steps["silver"],
            "retrieved": steps["judge"],
        },
    }
