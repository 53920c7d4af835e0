"""The loop's view of the workspace: who is labeled, who is a candidate, what each step did.

A step of a round writes `rounds/N/steps/<step>.json` when it finishes; a re-run finds the
marker and reuses its result instead of redoing the work, and `rounds/N/summary.json` marks a
whole round as done. Labels are appended keyed by pair_id (the first label a pair gets is the
one it keeps), so a step killed half-way and re-run adds nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from pipeline.pool import active_pool
from pipeline.store import Workspace
from schemas.attributes import ATTRIBUTES_SCHEMA
from schemas.labels import DECISIONS_SCHEMA, LABELS_SCHEMA, SCORES_SCHEMA, VERIFICATIONS_SCHEMA
from schemas.pair import DROPPED_SCHEMA

LABEL_VERDICTS = ("chosen", "rejected")
STAGE2_DIR = "stage2"


def round_dir(round_: int) -> str:
    return f"rounds/{round_}"


def step(ws: Workspace, folder: str, name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `work` once per workspace: its result is stored as `<folder>/steps/<name>.json`.

    Its start and end are progress events (flows.progress), so a run shows where it is.
    """
    from flows.progress import progress, step_items, within

    stage, _, number = folder.partition("/")
    where = ("stage1" if stage == "rounds" else stage, int(number) if number.isdigit() else None, name)
    marker = f"{folder}/steps/{name}.json"
    done = ws.read_json(marker)
    if done is not None:
        items = step_items(done) or 1
        progress(*where, items, items, note="done before")
        return done
    progress(*where, 0, None)
    with within(*where):
        result = work()
    ws.write_json(marker, result)
    items = step_items(result) or 1
    progress(*where, items, items)
    return result


def completed_rounds(ws: Workspace) -> list[int]:
    """Stage-1 rounds whose summary.json exists, in order."""
    rounds = [int(n) for n in ws.listdir("rounds") if n.isdigit()]
    return sorted(r for r in rounds if ws.exists(f"{round_dir(r)}/summary.json"))


def round_summaries(ws: Workspace) -> list[dict[str, Any]]:
    return [ws.read_json(f"{round_dir(r)}/summary.json") for r in completed_rounds(ws)]


def dropped_ids(ws: Workspace) -> pl.Series:
    return pl.from_arrow(ws.read("dropped", ["pair_id"], schema=DROPPED_SCHEMA))["pair_id"]  # type: ignore[index]


def active_ids(ws: Workspace, pair_ids: pl.Series | None = None) -> pl.DataFrame:
    """(pair_id, source, label_source, ingest_seq) of every pair in the pool and not dropped by
    cleaning; of those of `pair_ids` only (filtered as the pool is scanned) when given."""
    frame = active_pool(ws).select("pair_id", "source", "label_source", "ingest_seq")
    if pair_ids is not None:
        frame = frame.filter(pl.col("pair_id").is_in(pair_ids.implode()))
    return frame.collect().unique("pair_id", keep="first").sort("pair_id")


def labels(ws: Workspace, table: str) -> pl.DataFrame:
    return pl.from_arrow(ws.read(table, schema=LABELS_SCHEMA))  # type: ignore[return-value]


def labeled_ids(ws: Workspace) -> set[str]:
    """Pairs already looked at: gold or silver labels (ties included) and human verifications
    (a pair an annotator could not decide is discarded, not offered again)."""
    verified = ws.read("verifications", ["pair_id"], schema=VERIFICATIONS_SCHEMA).column("pair_id")
    return (set(labels(ws, "gold")["pair_id"].to_list()) | set(labels(ws, "silver")["pair_id"].to_list())
            | set(verified.to_pylist()))


def add_labels(ws: Workspace, table: str, rows: pl.DataFrame) -> int:
    """Append gold/silver rows; a pair already labeled keeps its first label."""
    if rows.height == 0:
        return 0
    return ws.append(table, rows.select(LABELS_SCHEMA.names), unique_key="pair_id", schema=LABELS_SCHEMA)


def label_rows(pair_ids: list[str], verdicts: list[str], origin: str, round_: int,
               detail: list[str] | None = None) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "pair_id": pair_ids,
            "verdict": verdicts,
            "origin": [origin] * len(pair_ids),
            "round": [round_] * len(pair_ids),
            "detail": detail if detail is not None else [""] * len(pair_ids),
        },
        schema={"pair_id": pl.String, "verdict": pl.String, "origin": pl.String,
                "round": pl.Int32, "detail": pl.String},
    )


def training_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """(pair_id, verdict) rows an RM can train on: decided labels only, in a stable order."""
    return frame.filter(pl.col("verdict").is_in(LABEL_VERDICTS)).select("pair_id", "verdict").sort("pair_id")


def with_attributes(ws: Workspace, frame: pl.DataFrame) -> pl.DataFrame:
    """Join the 5-tuple columns the priority batch and per-category metrics use (the attributes
    of `frame`'s pairs only: filtered as the table is scanned)."""
    attrs = (ws.scan("attributes", schema=ATTRIBUTES_SCHEMA)
             .select("pair_id", "task_category", "objectivity", "controversiality")
             .filter(pl.col("pair_id").is_in(frame["pair_id"].implode())).collect())
    attrs = attrs.unique("pair_id", keep="first", maintain_order=True)
    return frame.join(attrs, on="pair_id", how="left", maintain_order="left")


def scores(ws: Workspace, round_: int, model: str | None = None,
           pair_ids: pl.Series | None = None) -> pl.DataFrame:
    """One round's scores (of one model; of `pair_ids` only), first row per pair, by pair_id.

    The filters go down to the Parquet scan: parts of other rounds are skipped by their
    statistics, and with `pair_ids` (the gold parts) the driver never holds the pool's scores.
    """
    frame = ws.scan("scores", schema=SCORES_SCHEMA).filter(pl.col("round") == round_)
    if model is not None:
        frame = frame.filter(pl.col("model") == model)
    if pair_ids is not None:
        frame = frame.filter(pl.col("pair_id").is_in(pair_ids.implode()))
    return frame.collect().unique(["pair_id"], keep="first").sort("pair_id")


def decisions(ws: Workspace) -> pl.DataFrame:
    return pl.from_arrow(ws.read("decisions", schema=DECISIONS_SCHEMA))  # type: ignore[return-value]


def gold_accuracy(ws: Workspace, gold: pl.DataFrame, round_scores: pl.DataFrame) -> dict[str, Any]:
    """Accuracy of an RM's scores on the gold labels, overall and per task category."""
    frame = training_frame(gold).join(round_scores.select("pair_id", "p"), on="pair_id", how="inner")
    if frame.height == 0:
        return {"gold_accuracy": None, "gold_accuracy_per_category": {}, "gold_scored": 0}
    frame = with_attributes(ws, frame).join(
        active_ids(ws, frame["pair_id"]).select("pair_id", "source"), on="pair_id", how="left"
    )
    frame = frame.with_columns(
        correct=(pl.col("p") > 0.5) == (pl.col("verdict") == "chosen"),
        category=pl.coalesce("task_category", "source", pl.lit("unknown")),
    )
    per_category = frame.group_by("category").agg(pl.col("correct").mean()).sort("category")
    return {
        "gold_accuracy": float(frame["correct"].mean()),  # type: ignore[arg-type]
        "gold_accuracy_per_category": dict(
            zip(per_category["category"].to_list(), per_category["correct"].to_list(), strict=True)
        ),
        "gold_scored": frame.height,
    }


def pool_counts(ws: Workspace) -> dict[str, int]:
    """Pool composition: gold / silver / unlabeled (active, not labeled) / dropped.

    Counted by streaming scans and joins (the pool's pair_id is its key, so active pairs are
    counted, not collected): no id set is built in Python; the joins hold the labeled ids as
    Arrow columns.
    """
    gold = ws.scan("gold", schema=LABELS_SCHEMA).select("pair_id").unique()
    silver = ws.scan("silver", schema=LABELS_SCHEMA).select("pair_id").unique().join(gold, on="pair_id",
                                                                                    how="anti")
    active = active_pool(ws).select("pair_id")
    counts = pl.collect_all([
        gold.select(pl.len()), silver.select(pl.len()), active.select(pl.len()),
        active.join(pl.concat([gold, silver]), on="pair_id", how="semi").select(pl.len()),
        ws.scan("dropped", schema=DROPPED_SCHEMA).select(pl.col("pair_id").n_unique()),
    ], engine="streaming")
    n_gold, n_silver, n_active, n_labeled, n_dropped = (int(frame.item()) for frame in counts)
    return {"gold": n_gold, "silver": n_silver, "unlabeled": n_active - n_labeled, "dropped": n_dropped}
