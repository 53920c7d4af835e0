"""The quality meter's two workspace steps: write a noised copy of a pool, and, once the loop
has run on that copy, score every stage and filter against the recorded flips.

`noisy_copy` gives the copy a gold seed whose labels stay untouched (label_source `human`;
every other pair is marked `ai`, so only the seed can become gold) and records every injected
flip in the `quality/injected` table. `detection_report` reads what the loop wrote (silver
labels, stage-2 decisions, gold-RM scores, judgments) and asks, per filter: which pairs did it
treat as wrongly labeled, and how many of those were really flipped?
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline.quality.metrics import curated_errors, detection_metrics, recycling_effect
from pipeline.quality.noise import INJECTED_SCHEMA, NoiseConfig, inject_noise
from pipeline.store import Workspace
from schemas.errors import InputError
from schemas.labels import DECISIONS_SCHEMA, JUDGMENTS_SCHEMA, LABELS_SCHEMA, SCORES_SCHEMA
from schemas.pair import POOL_SCHEMA

FILTERS = ("stage1 judges (silver)", "best RM (filter A)", "gold RM", "stage2 judges",
           "filter B (stage 2 combined)", "recycled flips", "whole loop")
"""The report's rows, in the order the loop runs them."""
INJECTED_TABLE = "quality/injected"
SETTINGS_FILE = "quality/settings.json"


def noisy_copy(pool: pa.Table, target: Workspace, noise: NoiseConfig, *, gold_ids: Collection[str],
               meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `pool` with injected noise into the empty workspace `target`.

    Re-running with the same settings on a finished copy does nothing; a copy made with other
    settings, or a target holding another pool, is an error (the meter never mixes runs).
    """
    settings = {"flip_share": noise.flip_share, "length_bias": noise.length_bias, "seed": noise.seed,
                "pairs": pool.num_rows, "gold_seed": len(set(gold_ids)), **(meta or {})}
    existing = target.read_json(SETTINGS_FILE)
    if existing is not None:
        if existing != settings:
            raise InputError(f"{target.uri} holds a noised copy made with other settings "
                             f"({existing}); use another output workspace")
        return existing
    if target.has_table("pool"):
        raise InputError(f"{target.uri} already has a pool; the meter needs an empty workspace")
    gold = set(gold_ids)
    label_source = pa.array(["human" if p in gold else "ai" for p in pool.column("pair_id").to_pylist()],
                            pa.string())
    relabeled = pool.set_column(pool.schema.get_field_index("label_source"), "label_source", label_source)
    noisy = inject_noise(relabeled, noise, protected=gold)
    target.replace("pool", noisy.pool, schema=POOL_SCHEMA)
    target.replace(INJECTED_TABLE, noisy.injected, schema=INJECTED_SCHEMA)
    target.write_json(SETTINGS_FILE, settings)
    return settings


def injected(ws: Workspace) -> pl.DataFrame:
    if not ws.has_table(INJECTED_TABLE):
        raise InputError(f"{ws.uri} has no {INJECTED_TABLE} table: it is not a noised copy")
    return pl.from_arrow(ws.read(INJECTED_TABLE, schema=INJECTED_SCHEMA))  # type: ignore[return-value]


def truth_labels(ws: Workspace, pair_ids: Collection[str] | None = None) -> pl.DataFrame:
    """(pair_id, verdict) with the true orientation of every noised pair: what a noise-free
    pool would train on (`rejected` where the stored label was flipped)."""
    frame = injected(ws).select(
        "pair_id", verdict=pl.when(pl.col("flipped")).then(pl.lit("rejected")).otherwise(pl.lit("chosen")))
    if pair_ids is not None:
        frame = frame.filter(pl.col("pair_id").is_in(list(pair_ids)))
    return frame.sort("pair_id")


def detection_report(ws: Workspace, *, stage2_round: int | None, gold_rm_model: str = "gold-rm",
                     threshold: float = 0.5) -> dict[str, Any]:
    """Flip detection per stage and filter, recycling effects and the curated set's label errors.

    Only pairs outside the gold seed count (the seed's labels are never noised). Each entry of
    `filters` holds a `Detection` (precision, recall, F1, clean-discard rate) over the pairs
    that filter saw; `recycling` says what flipping every filter-B discard would do, and
    `curated` what the loop's own keep / flip decisions left.
    """
    truth = injected(ws)
    universe = set(truth.filter(~pl.col("protected"))["pair_id"].to_list())
    flipped = set(truth.filter(pl.col("flipped"))["pair_id"].to_list())
    silver = _read(ws, "silver", LABELS_SCHEMA).filter(pl.col("pair_id").is_in(list(universe)))
    decisions = _read(ws, "decisions", DECISIONS_SCHEMA)
    if stage2_round is not None:
        decisions = decisions.filter(pl.col("round") == stage2_round)

    def ids(frame: pl.DataFrame, condition: pl.Expr | None = None) -> set[str]:
        return set((frame.filter(condition) if condition is not None else frame)["pair_id"].to_list())

    filters: dict[str, Any] = {}
    silver_seen = ids(silver)
    silver_flag = ids(silver, pl.col("verdict") != "chosen")
    filters["stage1 judges (silver)"] = detection_metrics(silver_flag, flipped, silver_seen)

    a = decisions.filter(pl.col("filter") == "A")
    b = decisions.filter(pl.col("filter") == "B")
    recycle = decisions.filter(pl.col("filter") == "recycle")
    b_seen = ids(b) & universe
    b_discard = ids(b, pl.col("decision") == "discard") & universe
    kept = (ids(b) - b_discard) & universe
    recycled = ids(recycle, pl.col("decision") == "flip") & universe
    if b_seen:
        filters["best RM (filter A)"] = detection_metrics(ids(a, pl.col("decision") == "relabel"),
                                                          flipped, ids(a) & universe)
        if stage2_round is not None:
            gold_scores = _read(ws, "scores", SCORES_SCHEMA).filter(
                (pl.col("round") == stage2_round) & (pl.col("model") == gold_rm_model))
            filters["gold RM"] = detection_metrics(ids(gold_scores, pl.col("p") <= threshold), flipped,
                                                   ids(gold_scores) & b_seen)
            votes = _stage2_votes(ws, stage2_round, ids(a, pl.col("decision") == "relabel"))
            if votes.height:
                filters["stage2 judges"] = detection_metrics(
                    ids(votes, pl.col("verdict") != "chosen"), flipped, ids(votes) & b_seen)
        filters["filter B (stage 2 combined)"] = detection_metrics(b_discard, flipped, b_seen)
        filters["recycled flips"] = detection_metrics(recycled, flipped, b_seen)
    loop_seen = silver_seen | b_seen
    filters["whole loop"] = detection_metrics(silver_flag | b_discard, flipped, loop_seen)

    silver_kept = ids(silver, pl.col("verdict") == "chosen")
    silver_flipped = ids(silver, pl.col("verdict") == "rejected")
    return {
        "pairs": len(universe),
        "flipped": len(flipped & universe),
        "noise_kinds": dict(truth.filter(~pl.col("protected")).group_by("kind").len()
                            .sort("kind").iter_rows()),
        "filters": {name: d.as_dict() for name, d in filters.items()},
        "recycling": recycling_effect(b_discard, flipped, b_seen).as_dict() if b_seen else None,
        "curated": curated_errors(silver_kept | kept, silver_flipped | recycled, flipped).as_dict(),
        "unseen": len(universe - loop_seen),
    }


def _read(ws: Workspace, table: str, schema: pa.Schema) -> pl.DataFrame:
    return pl.from_arrow(ws.read(table, schema=schema))  # type: ignore[return-value]


def _stage2_votes(ws: Workspace, round_: int, pair_ids: set[str]) -> pl.DataFrame:
    """The judges' aggregated verdicts on the pairs stage 2 sent them."""
    from pipeline.judges import aggregate_votes

    judgments = _read(ws, "judgments", JUDGMENTS_SCHEMA).filter(
        (pl.col("round") == round_) & pl.col("pair_id").is_in(list(pair_ids)))
    if judgments.height == 0:
        return pl.DataFrame(schema={"pair_id": pl.String, "verdict": pl.String})
    return aggregate_votes(judgments).select("pair_id", "verdict")
