"""Clean: exact dedup, 13-gram decontamination against benchmark prompts, semantic dedup.

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
    if config.semantic_dedup.enabled:
        stats["embed"] = embed_task(ws.uri, config.embed, "conversation")
        stats["semantic_dedup"] = semantic_dedup_task(ws.uri, config.embed, config.semantic_dedup,
                                                      config.index)
    return stats
