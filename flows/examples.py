"""Worked examples for the judges: each target's nearest human-labeled (gold) pairs.

method.md: the judge prompt holds up to 8 human-labeled pairs similar to the target, with their
attributes. Similarity is over the (conversation, attributes) embeddings the loop already has,
joined with the image view for image pairs when `embed.image_model` is set.
"""

from __future__ import annotations

from typing import Any

from flows.gold_parts import gold_part
from pipeline.store import Workspace
from schemas.config import EmbedConfig

VIEW = "conversation+attributes"


def gold_neighbours(ws: Workspace, cfg: EmbedConfig, targets: list[str], k: int = 8) -> dict[str, list[str]]:
    """target pair_id -> up to k train-part gold pair_ids, nearest first (never the target itself)."""
    from pipeline.embed_images import load_retrieval_vectors
    from pipeline.index import VectorIndex

    # Only the train part: an evaluation pair is never shown to a judge.
    gold_ids = gold_part(ws, "train")["pair_id"].to_list()
    if not gold_ids or not targets or k <= 0:
        return {}
    ids, vectors = load_retrieval_vectors(ws, cfg, VIEW, gold_ids)
    target_ids, target_vectors = load_retrieval_vectors(ws, cfg, VIEW, targets)
    if not ids or not target_ids:
        return {}
    index = VectorIndex.build(ids, vectors)
    hits = index.search(target_vectors, k + 1)
    return {
        target: [pid for pid, _ in found if pid != target][:k]
        for target, found in zip(target_ids, hits, strict=True)
    }


def judge_examples(ws: Workspace, cfg: EmbedConfig, targets: list[str], k: int) -> dict[str, Any]:
    """LabeledExample lists per target, as `judge_pairs(examples=...)` takes them."""
    from pipeline.judges.run import labeled_examples

    neighbours = gold_neighbours(ws, cfg, targets, k)
    return labeled_examples(ws, neighbours, table="gold", k=k) if neighbours else {}

