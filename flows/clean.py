"""Clean: exact dedup, 13-gram decontamination against benchmark prompts, semantic dedup; for
image-text pairs also near-duplicate images (phash, CLIP if configured) and image+question
decontamination.

Each cleaning stage records what it removes in the `dropped` table with its reason; the loop
works on the active pool (the pool minus every dropped pair). Exact dedup and decontamination
are stage contracts (pipeline/stage.py) run as tasks over pool partitions on the chosen task
runner (flows/stages.py): local threads, or Dask / Ray workers, with the same result; so are the
embedding that semantic dedup reads (pipeline/embed_stage.py) and semantic dedup itself
(pipeline/semantic_dedup_stage.py: per-partition samples and maps, a task per k-means cell, one
merge by keep rank, one commit).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.runners import make_task_runner
from flows.stages import Step, embed_flow, stages_flow
from flows.tasks import semantic_dedup_tasks
from pipeline.clean import Decontamination, ExactDedup
from pipeline.semantic_dedup_stage import SemanticDedupStage, run_semantic_dedup
from pipeline.stage import ROWS_PER_PARTITION
from pipeline.store import Workspace
from schemas.config import EmbedConfig, IndexConfig, SemanticDedupConfig, SynprefConfig

STAGE_KEYS = {"exact-dedup": "exact_dedup", "decontamination": "decontaminate"}


def clean_steps(config: SynprefConfig) -> list[Step]:
    """The pool filters the config asks for, in the order they run."""
    steps: list[Step] = [ExactDedup()]
    if config.clean.benchmarks:
        steps.append(Decontamination(config.clean.benchmarks, config.clean.ngram))
    return steps


@flow(name="semantic-dedup")
def semantic_dedup_flow(
    ws_uri: str, embed: EmbedConfig, dedup: SemanticDedupConfig, index: IndexConfig,
    rows_per_partition: int = ROWS_PER_PARTITION, cell_rows: int | None = None,
) -> dict[str, Any]:
    """Near-duplicates of the active pool as tasks on the flow's task runner, one commit of
    `dropped`; `cell_rows` (default: the config's) sizes the reduce tasks."""
    stage = SemanticDedupStage(embed, dedup, index, cell_rows=cell_rows or dedup.cell_rows)
    return run_semantic_dedup(Workspace(ws_uri), stage, run=semantic_dedup_tasks(ws_uri),
                              rows_per_partition=rows_per_partition)


@flow(name="compact")
def compact_flow(ws_uri: str, min_rows: int) -> dict[str, Any]:
    """The pool's parts of small ingests clustered by pair_id (pipeline/pool_compact.py), their
    jobs as tasks on the flow's task runner, once they hold `min_rows` rows (0: never)."""
    from flows.ingest import parts_on_runner
    from pipeline.pool_compact import CompactStats, compact_pool, loose_parts

    ws = Workspace(ws_uri)
    loose = loose_parts(ws)
    rows = sum(int(s["rows"]) for s in loose)
    if not min_rows or rows < min_rows:
        return CompactStats(len(loose), rows, reason=f"{rows} loose rows, below clean.compact_rows = "
                            f"{min_rows}" if min_rows else "clean.compact_rows = 0").as_dict()
    return compact_pool(ws, run=parts_on_runner(ws)).as_dict()


@flow(name="clean")
def clean_flow(
    config: SynprefConfig, runner: str = "local", runner_address: str | None = None,
    workers: int | None = None, rows_per_partition: int = ROWS_PER_PARTITION,
) -> dict[str, Any]:
    """The pool compacted when small ingests left enough loose rows, then every cleaning stage
    the config asks for, each as tasks on `runner`."""
    ws = Workspace(config.workspace)
    task_runner = make_task_runner(runner, address=runner_address, workers=workers)
    compacted = compact_flow.with_options(task_runner=task_runner)(ws.uri, config.clean.compact_rows)
    ran = stages_flow.with_options(task_runner=task_runner)(ws.uri, clean_steps(config), rows_per_partition)
    stats: dict[str, Any] = {"compact": compacted, **{STAGE_KEYS[name]: value for name, value in ran.items()}}
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
        stats["embed"] = embed_flow.with_options(task_runner=task_runner)(
            ws.uri, config.embed, "conversation", rows_per_partition)
        stats["semantic_dedup"] = semantic_dedup_flow.with_options(task_runner=task_runner)(
            ws.uri, config.embed, config.semantic_dedup, config.index, rows_per_partition)
    return stats


@flow(name="dedup")
def dedup_flow(config: SynprefConfig, runner: str = "local", runner_address: str | None = None,
               workers: int | None = None, rows_per_partition: int = ROWS_PER_PARTITION) -> dict[str, Any]:
    """`synpref dedup --semantic --runner ...`: the conversation view's missing vectors, then
    semantic dedup, both as tasks on `runner` (what `clean` runs after exact dedup)."""
    ws = Workspace(config.workspace)
    task_runner = make_task_runner(runner, address=runner_address, workers=workers)
    embedded = embed_flow.with_options(task_runner=task_runner)(
        ws.uri, config.embed, "conversation", rows_per_partition)
    result = semantic_dedup_flow.with_options(task_runner=task_runner)(
        ws.uri, config.embed, config.semantic_dedup, config.index, rows_per_partition)
    return {"embed": embedded, "semantic_dedup": result}
