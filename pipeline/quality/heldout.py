"""Reward-model accuracy on a clean held-out set, for training sets that differ only in labels.

The world experiment trains one RM per condition (raw noisy pool, curated subset, random
subset of the same size, noise-free pool) on pairs of one workspace and scores the same
held-out pairs. Embedding-head RMs share one encoder so every text is encoded once across
conditions; other kinds go through `train_rm` like any loop step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from pipeline.quality.metrics import pair_correct
from pipeline.rm import Example, build_rm, oriented_examples, train_rm
from pipeline.store import Workspace
from schemas.config.rm import RMConfig
from schemas.pair import PairRecord


def random_subset(labels: pl.DataFrame, size: int, seed: int) -> pl.DataFrame:
    """`size` rows of `labels`, drawn uniformly with a seed (independent of row order)."""
    ordered = labels.sort("pair_id")
    size = min(size, ordered.height)
    rng = np.random.default_rng(seed)
    return ordered[sorted(rng.choice(ordered.height, size=size, replace=False).tolist())]


def heldout_correct(ws: Workspace, cfg: RMConfig, conditions: Mapping[str, pl.DataFrame],
                    gold: pl.DataFrame | None, heldout: Sequence[PairRecord],
                    out_dir: str = "quality/rm") -> dict[str, np.ndarray]:
    """Per condition, the per-pair correctness (1 / 0.5 / 0) on `heldout` of an RM trained on
    that condition's (pair_id, verdict) labels and selected on `gold`."""
    examples = [Example.from_record(r) for r in heldout]
    if not examples:
        raise ValueError("the held-out set is empty")
    shared_encoder = None
    results: dict[str, np.ndarray] = {}
    gold_examples = oriented_examples(ws, gold, "gold")[0] if gold is not None and gold.height else []
    for name, labels in conditions.items():
        if cfg.kind == "embedding-head":
            from pipeline.rm.embedding_head import EmbeddingHeadRM

            model = build_rm(cfg)
            if not isinstance(model, EmbeddingHeadRM):
                raise TypeError(f"rm.kind embedding-head built a {type(model).__name__}")
            if shared_encoder is None:
                shared_encoder = model.encoder
            model.encoder = shared_encoder
            train, _ = oriented_examples(ws, labels, f"{name} train")
            if not train:
                raise ValueError(f"condition {name!r}: no pair to train on")
            model.fit(train, gold_examples or None)
        else:
            trained = train_rm(ws, cfg, labels, gold, f"{out_dir}/{_slug(name)}").model
            if trained is None:
                raise RuntimeError(f"condition {name!r}: training returned no model")
            model = trained
        results[name] = pair_correct(model.score(examples))
    return results


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
