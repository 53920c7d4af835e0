"""Score pairs with a saved RM in shards, on whatever task runner the flow was given.

Shards are submitted in windows of `max_parallel` so a cluster is kept busy without queueing
the whole pool at once; each shard returns rows and the flow appends them (keyed by pair_id,
round and model), so a killed run re-scores only the shards it had not written yet. Shard tasks
ask for a GPU when the cluster has them (flows.placement) and reuse their worker's engine
(flows.engines).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from flows.engines import release
from flows.loop_state import scores
from flows.placement import on_gpu_workers
from flows.progress import step_progress
from flows.tasks import score_shard_task
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
        for future in window:
            written += ws.append("scores", future.result(), unique_key=["pair_id", "round", "model"],
                                 schema=SCORES_SCHEMA)
            if report is not None:
                report(written, len(todo))
    release()  # the engine this process scored with (the local runner's threads share it)
    return {"scored": written, "already_scored": len(set(pair_ids) & done), "shards": len(shards),
            "gpu_tasks": gpu_tasks}


def scores_of(ws: Workspace, round_: int, model_name: str, pair_ids: list[str]) -> pl.DataFrame:
    """(pair_id, p) of `pair_ids` for one round and model."""
    frame = scores(ws, round_, model_name)
    return frame.filter(pl.col("pair_id").is_in(pair_ids)).select("pair_id", "p").sort("pair_id")
