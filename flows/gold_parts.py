"""Held-out gold: which human-verified pairs may train and guide, and which only evaluate.

Every pair that joins gold is assigned a part once (`gold_split` table): `train` pairs train the
gold RM, serve as the judges' worked examples and as retrieval anchors; `eval` pairs are never
trained on, never shown to a judge and never used to start a retrieval. Every accuracy the loop
reports or acts on is measured on the `eval` part, so no model is scored on pairs that it, or
the model that labeled its training data, learned from.
"""

from __future__ import annotations

import polars as pl

from flows.loop_state import active_ids, labels, training_frame, with_attributes
from pipeline.store import Workspace
from schemas.config import SynprefConfig
from schemas.labels import GOLD_SPLIT_SCHEMA

GOLD_SPLIT = "gold_split"


def gold_split(ws: Workspace) -> pl.DataFrame:
    """(pair_id, part, stratum, round) of every gold pair assigned so far."""
    return pl.from_arrow(ws.read(GOLD_SPLIT, schema=GOLD_SPLIT_SCHEMA))  # type: ignore[return-value]


def update_gold_split(ws: Workspace, config: SynprefConfig, round_: int) -> dict[str, int]:
    """Assign a part to every gold pair that has none yet (seeded, stratified by source and category)."""
    from pipeline.trust import assign_gold_parts

    existing = gold_split(ws)
    gold = labels(ws, "gold").select("pair_id").unique()
    new = gold.join(existing.select("pair_id"), on="pair_id", how="anti")
    if new.height:
        strata = with_attributes(ws, new.join(active_ids(ws, new["pair_id"]).select("pair_id", "source"),
                                              on="pair_id", how="left"))
        new = strata.select(
            "pair_id",
            stratum=pl.concat_str([pl.col("source").fill_null(""), pl.col("task_category").fill_null("")],
                                  separator="\x1f"),
        )
        parts = assign_gold_parts(new, existing.select("pair_id", "part", "stratum"),
                                  config.loop.gold_eval_share, config.loop.seed)
        rows = parts.with_columns(pl.lit(round_, dtype=pl.Int32).alias("round"))
        ws.append(GOLD_SPLIT, rows, unique_key="pair_id", schema=GOLD_SPLIT_SCHEMA)
    elif not ws.has_table(GOLD_SPLIT):
        ws.append(GOLD_SPLIT, GOLD_SPLIT_SCHEMA.empty_table(), schema=GOLD_SPLIT_SCHEMA)
    split = gold_split(ws)
    return {"gold_train": split.filter(pl.col("part") == "train").height,
            "gold_eval": split.filter(pl.col("part") == "eval").height,
            "assigned_now": new.height}


def gold_part(ws: Workspace, part: str) -> pl.DataFrame:
    """(pair_id, verdict) training rows of one gold part, in a stable order.

    A workspace whose gold was never split (gold written by hand, or a loop that has not started)
    has set nothing aside for evaluation: all of its gold is `train` and `eval` is empty.
    """
    gold = training_frame(labels(ws, "gold"))
    if not ws.has_table(GOLD_SPLIT):
        return gold.sort("pair_id") if part == "train" else gold.head(0)
    split = gold_split(ws).filter(pl.col("part") == part).select("pair_id")
    return gold.join(split, on="pair_id", how="semi").sort("pair_id")
