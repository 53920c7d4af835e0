"""Clean: exact dedup, 13-gram decontamination against benchmark prompts, semantic dedup; for
image-text pairs also near-duplicate images (phash, CLIP if configured) and image+question
decontamination.

Each cleaning stage records what it removes in the `dropped` table with its reason; the loop
works on the active pool (the pool minus every dropped pair).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.tasks import decontaminate_task, embed_task, exact_dedup_task, semantic_dedup_task
from pipeline.store import Workspace
from schemas.config import SynprefConfig


@flow(name="clean")
def clean_flow(config: SynprefConfig) -> dict[str, Any]:
    ws = Workspace(config.workspace)
    stats: dict[str, Any] = {"exact_dedup": exact_dedup_task(ws.uri)}
    if config.clean.benchmarks:
        stats["decontaminate"] = decontaminate_task(ws.uri, config.clean.benchmarks, config.clean.ngram)
    if ws.has_table("images") and ws.row_count("images"):  # image-text pairs in the pool
        from pipeline.clean_images import image_decontaminate, image_near_dedup

        clean = config.clean
        stats["image_near_dedup"] = image_near_dedup(ws, max_distance=clean.image_phash_distance).as_dict()
        if clean.clip_model:
            stats["image_clip_dedup"] = image_near_dedup(ws, clip_model=clean.clip_model,
                                                         clip_threshold=clean.clip_threshold).as_dict()
        if clean.benchmarks:
            stats["image_decontaminate"] = image_decontaminate(ws, clean.benchmarks, clean.ngram).as_dict()
    if config.semantic_dedup.enabled:
        stats["embed"] = embed_task(ws.uri, config.embed, "conversation")
        stats["semantic_dedup"] = semantic_dedup_task(ws.uri, config.embed, config.semantic_dedup,
                                                      config.index)
    return stats
