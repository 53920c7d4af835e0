"""Judging in shard tasks on the flow's task runner (threads, Dask or Ray workers).

Each shard task judges its pairs with every judge and writes its own judgments (the store's
commits are safe for concurrent writers); the flow holds only the shard receipts. A shard that
fails raises after what it judged is stored, so a re-run judges only what is missing. Shards of
model judges (offline vLLM, reward models) ask the cluster for a GPU (flows.placement); HTTP
judges spread their requests over their endpoints inside each shard.
"""

from __future__ import annotations

from typing import Any

from flows.placement import on_gpu_workers
from flows.progress import step_progress
from flows.tasks import judge_task
from pipeline.store import Workspace
from schemas.config import EmbedConfig, JudgeConfig

MODEL_JUDGES = ("vllm", "reward-model", "rm-workspace", "rm-crossfit")
SHARD_ROWS = 2_000
MAX_PARALLEL = 4


def judge_in_shards(ws: Workspace, judges: list[JudgeConfig], embed: EmbedConfig, pair_ids: list[str],
                    round_: int, seed: int, *, shard_rows: int = SHARD_ROWS,
                    max_parallel: int = MAX_PARALLEL) -> dict[str, Any]:
    """Judge `pair_ids` in shards of `shard_rows`, `max_parallel` shard tasks in flight."""
    from prefect.context import FlowRunContext

    ids = list(dict.fromkeys(pair_ids))
    if not ids or not judges:
        return {"shards": 0, "pairs": 0, "judgments_written": 0, "gpu_tasks": False, "worker_pids": []}
    shards = [ids[i:i + shard_rows] for i in range(0, len(ids), shard_rows)]
    receipts: list[dict[str, Any]] = []
    report = step_progress("judged") if len(shards) > 1 else None
    if FlowRunContext.get() is None:  # called outside a flow (a script, a notebook): in this process
        receipts = [judge_task(ws.uri, judges, embed, shard, round_, seed) for shard in shards]
        return _summary(receipts, len(shards), len(ids), False)
    wants_gpu = any(j.kind in MODEL_JUDGES for j in judges)
    gpus = float(max((j.tensor_parallel_size for j in judges if j.kind == "vllm"), default=1))
    gpu_tasks = False
    done = 0
    for start in range(0, len(shards), max_parallel):
        window = shards[start:start + max_parallel]
        if wants_gpu:
            with on_gpu_workers(gpus) as placed:
                futures = [judge_task.submit(ws.uri, judges, embed, shard, round_, seed) for shard in window]
            gpu_tasks = gpu_tasks or placed
        else:
            futures = [judge_task.submit(ws.uri, judges, embed, shard, round_, seed) for shard in window]
        for future, shard in zip(futures, window, strict=True):
            receipts.append(future.result())
            done += len(shard)
            if report is not None:
                report(done, len(ids))
    return _summary(receipts, len(shards), len(ids), gpu_tasks)


def _summary(receipts: list[dict[str, Any]], shards: int, pairs: int, gpu_tasks: bool) -> dict[str, Any]:
    written = sum(int(r.get("judgments_written", 0)) for r in receipts)
    pids = sorted({int(r["pid"]) for r in receipts if "pid" in r})
    return {"shards": shards, "pairs": pairs, "judgments_written": written, "gpu_tasks": gpu_tasks,
            "worker_pids": pids}
