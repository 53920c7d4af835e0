"""Score pairs with a saved RM in tasks, on whatever task runner the flow was given.

`score_partitions` runs one task per pool partition (pipeline.score_stage): each task picks its
own rows (the active pool, or stage 2's candidates and evaluation gold), skips pairs already
scored, writes its scores as a part and returns a receipt; the driver commits each window of
`max_parallel` tasks (keyed by pair_id, round and model), so a killed run re-scores only what no
window committed, and it never holds an id list. `score_in_shards` scores an explicit id list
in shards (small batches, tests). Tasks ask for a GPU when the cluster has them
(flows.placement) and reuse their worker's engine (flows.engines).
"""

from __future__ import annotations

from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.engines import release, scoring_model
from flows.loop_state import scores
from flows.partition_tasks import pids, run_partitions
from flows.placement import on_gpu_workers
from flows.progress import step_progress
from flows.tasks import SHARD_TAG, score_shard_task
from pipeline.partitions import partition_holding
from pipeline.parts import Receipt
from pipeline.score_stage import SCORES, ScoreStage
from pipeline.stage import Partition, plan_partitions
from pipeline.stage2_stage import candidate_partitions
from pipeline.store import Workspace
from schemas.labels import SCORES_SCHEMA

SHARD_ROWS = 2_000
MAX_PARALLEL = 4


def score_in_shards(
    ws: Workspace,
    rm_dir: str,
    pair_ids: list[str],
    round_: int,
    model_name: str,
    *,
    shard_rows: int = SHARD_ROWS,
    max_parallel: int = MAX_PARALLEL,
) -> dict[str, Any]:
    """Score `pair_ids` not yet scored for (round, model); returns counts."""
    done = set(scores(ws, round_, model_name)["pair_id"].to_list())
    todo = sorted(set(pair_ids) - done)
    shards = [todo[i : i + shard_rows] for i in range(0, len(todo), shard_rows)]
    written = 0
    report = step_progress("scored")
    gpu_tasks = False
    for start in range(0, len(shards), max_parallel):
        with on_gpu_workers() as placed:
            gpu_tasks = gpu_tasks or placed
            window = [
                score_shard_task.submit(ws.uri, rm_dir, shard, round_, model_name)
                for shard in shards[start : start + max_parallel]
            ]
        for future, shard in zip(window, shards[start : start + max_parallel], strict=True):
            # on a clustered pool a shard's scores name its slice's pool parts (pipeline/covers.py)
            written += ws.append("scores", future.result(), unique_key=["pair_id", "round", "model"],
                                 schema=SCORES_SCHEMA, partition=partition_holding(ws, shard))
            if report is not None:
                report(written, len(todo))
    release()  # the engine this process scored with (the local runner's threads share it)
    return {"scored": written, "already_scored": len(set(pair_ids) & done), "shards": len(shards),
            "gpu_tasks": gpu_tasks}


@task(name="score-partition", retries=2, tags=[SHARD_TAG], cache_policy=NO_CACHE)
def score_partition_task(ws_uri: str, stage: ScoreStage, partition: Partition) -> Receipt:
    """One pool partition's selected rows scored by the worker's engine (loaded on its first
    partition, reused for the next); an uncommitted part of `scores` and its receipt."""
    ws = Workspace(ws_uri)
    return stage.run(ws, partition, lambda: scoring_model(ws, stage.rm_dir))


def score_partitions(ws: Workspace, stage: ScoreStage, *, rows_per_partition: int = SHARD_ROWS,
                     max_parallel: int = MAX_PARALLEL) -> dict[str, Any]:
    """Score what `stage` selects in every pool partition not yet scored for (round, model):
    one task per partition, a commit per window of `max_parallel` tasks; counts and receipts'
    figures (no ids). Stage 2's selection uses the candidates table's own partitions."""
    partitions = (candidate_partitions(ws) if stage.select == "stage2"
                  else plan_partitions(ws, rows_per_partition))
    written = 0

    def commit(window: list[Receipt]) -> None:
        nonlocal written
        written += stage.commit(ws, window)

    try:
        receipts, gpu_tasks = run_partitions(ws, score_partition_task, stage, partitions,
                                             max_parallel=max_parallel, gpus=1.0, table=SCORES,
                                             on_window=commit, progress=step_progress("scored"))
    finally:
        release()  # the engine this process scored with (the local runner's threads share it)
    return {"scored": written, "already_scored": sum(int(r["already_scored"]) for r in receipts),
            "examined": sum(int(r["examined"]) for r in receipts), "shards": len(receipts),
            "partitions": len(partitions), "gpu_tasks": gpu_tasks, "worker_pids": pids(receipts)}


def scores_of(ws: Workspace, round_: int, model_name: str, pair_ids: list[str]) -> pl.DataFrame:
    """(pair_id, p) of `pair_ids` for one round and model."""
    frame = scores(ws, round_, model_name)
    return frame.filter(pl.col("pair_id").is_in(pair_ids)).select("pair_id", "p").sort("pair_id")
