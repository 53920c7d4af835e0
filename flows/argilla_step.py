"""Human verification of a batch in Argilla: push, then poll until annotators finish or a deadline.

The deadline is stored in the round folder when the batch is first pushed, so a run that is
stopped while it waits and started again keeps the original deadline (and re-pushing adds no
duplicate records).
"""

from __future__ import annotations

import time
from typing import Any

import polars as pl

from pipeline.store import Workspace
from schemas.config import SynprefConfig
from schemas.labels import LABELS_SCHEMA, VERIFICATIONS_SCHEMA, LabelOrigin, VerificationStatus


def finished_pairs(ws: Workspace, pair_ids: list[str], overlap: int) -> set[str]:
    """Pairs with at least `overlap` annotators' answers (submitted or discarded)."""
    frame = pl.from_arrow(ws.read("verifications", ["pair_id", "annotator"], schema=VERIFICATIONS_SCHEMA))
    counts = (
        frame.filter(pl.col("pair_id").is_in(pair_ids))  # type: ignore[union-attr]
        .group_by("pair_id").agg(pl.col("annotator").n_unique().alias("n"))
    )
    return set(counts.filter(pl.col("n") >= overlap)["pair_id"].to_list())


def verify_in_argilla(
    ws: Workspace, config: SynprefConfig, pair_ids: list[str], round_: int
) -> dict[str, Any]:
    """Push `pair_ids` (with attributes and judge votes as suggestions), wait, pull gold."""
    from flows.annotation_sync import pull_from_argilla, push_to_argilla

    loop, cfg = config.loop, config.argilla
    marker = f"rounds/{round_}/argilla-{len(pair_ids)}-{pair_ids[0]}.json"
    started = ws.read_json(marker)
    if started is None:
        started = {"deadline": time.time() + loop.deadline_s, "pushed_at": time.time()}
        ws.write_json(marker, started)
    pushed = push_to_argilla(ws, cfg, pair_ids, round=round_)
    while True:
        pulled = pull_from_argilla(ws, cfg)
        done = finished_pairs(ws, pair_ids, cfg.overlap)
        if len(done) == len(set(pair_ids)) or time.time() >= started["deadline"]:
            break
        time.sleep(min(loop.poll_s, max(0.0, started["deadline"] - time.time())))
    return {
        "mode": "argilla",
        "sent": len(pair_ids),
        "pushed": getattr(pushed, "created", None),
        "finished": len(done),
        "timed_out": len(done) < len(set(pair_ids)),
        "gold_added": len(human_gold(ws, pair_ids)),
        "discarded": len(discarded_pairs(ws, pair_ids)),
        "gold_total": pulled.gold_labels,
    }


def human_gold(ws: Workspace, pair_ids: list[str]) -> set[str]:
    """Pairs of this batch with a human gold label (the batch's share, not the dataset's)."""
    gold = pl.from_arrow(ws.read("gold", ["pair_id", "origin"], schema=LABELS_SCHEMA))
    human = pl.col("origin") == LabelOrigin.human.value
    return set(gold.filter(pl.col("pair_id").is_in(pair_ids) & human)["pair_id"].to_list())  # type: ignore[union-attr]


def discarded_pairs(ws: Workspace, pair_ids: list[str]) -> set[str]:
    """Pairs of this batch that an annotator discarded (could not decide)."""
    frame = pl.from_arrow(ws.read("verifications", ["pair_id", "status"], schema=VERIFICATIONS_SCHEMA))
    discarded = pl.col("status") == VerificationStatus.discarded.value
    return set(frame.filter(pl.col("pair_id").is_in(pair_ids) & discarded)["pair_id"].to_list())  # type: ignore[union-attr]
