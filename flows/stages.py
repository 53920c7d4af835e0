"""The executor of stage contracts (pipeline/stage.py): Prefect tasks over partitions and buckets.

Each task runs where the flow's task runner puts it (Prefect's threads, Dask worker processes, a
Ray cluster: flows/runners.py), reads its own partition from the workspace, writes its own parts
and returns a receipt (counts, part names, its PID). The flow holds only receipts and commits each
stage once, so a stage's result does not depend on the runner or the number of workers. Stages
run one after another: each sees what the one before it dropped. Export (pipeline/export_stage.py)
runs the same way: its map, reduce and write calls become tasks through `prefect_tasks`, and so
does embedding (pipeline/embed_stage.py): one task per partition, reporting progress per finished
partition from the driver.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from flows.placement import on_gpu_workers
from pipeline.embed_stage import EmbedStage, receipt_summary
from pipeline.export import SHARD_ROWS, dataset_card
from pipeline.export_stage import Call, ExportStage, RunTasks, run_export
from pipeline.parts import Receipt, discard
from pipeline.stage import ROWS_PER_PARTITION, GlobalStep, Partition, PoolFilter, plan_partitions
from pipeline.store import Workspace
from schemas.config import EmbedConfig

Step = PoolFilter | GlobalStep


@task(name="stage-partition", cache_policy=NO_CACHE)
def partition_task(ws_uri: str, step: Step, partition: Partition, token: str) -> dict[str, Any]:
    ws = Workspace(ws_uri)
    if isinstance(step, GlobalStep):
        return step.run_map(ws, partition, token)
    return step.run(ws, partition)


@task(name="stage-bucket", cache_policy=NO_CACHE)
def bucket_task(ws_uri: str, step: GlobalStep, bucket: int, token: str) -> dict[str, Any]:
    return step.run_reduce(Workspace(ws_uri), bucket, token)


def run_stage(ws: Workspace, step: Step, rows_per_partition: int) -> dict[str, Any]:
    """One stage as tasks on the current flow's task runner, then one commit; its stats as a dict
    with the PIDs the tasks ran on."""
    started = time.perf_counter()
    partitions = plan_partitions(ws, rows_per_partition)
    token = ""
    if isinstance(step, GlobalStep):
        step, token = step.sized(len(partitions)), step.shuffle_token()
    try:
        receipts = [f.result() for f in
                    [partition_task.submit(ws.uri, step, p, token) for p in partitions]]
        if isinstance(step, GlobalStep):
            buckets = sorted({b for r in receipts for b in r["buckets"]})
            receipts += [f.result() for f in [bucket_task.submit(ws.uri, step, b, token) for b in buckets]]
        stats = step.commit(ws, receipts, started=started)
    finally:
        if isinstance(step, GlobalStep):
            step.cleanup(ws, token)
    return {**stats.as_dict(), "pids": sorted({int(r["pid"]) for r in receipts}),
            "parts": [p["file"] for r in receipts for p in r["parts"]],
            "task_seconds": round(sum(float(r["seconds"]) for r in receipts), 3),
            "task_peak_rss_mb": round(max((float(r["peak_rss_mb"]) for r in receipts), default=0.0), 1)}


@flow(name="stages")
def stages_flow(ws_uri: str, steps: list[Step], rows_per_partition: int) -> dict[str, dict[str, Any]]:
    """Run `steps` in order, each as partition (and bucket) tasks and one commit."""
    ws = Workspace(ws_uri)
    return {step.name: run_stage(ws, step, rows_per_partition) for step in steps}


@task(name="export-part", task_run_name="export-{method}", cache_policy=NO_CACHE)
def export_part_task(ws_uri: str, stage: ExportStage, method: str, args: tuple[Any, ...]) -> Receipt:
    return getattr(stage, method)(Workspace(ws_uri), *args)  # type: ignore[no-any-return]


def prefect_tasks(ws_uri: str) -> RunTasks:
    """Export calls as Prefect tasks on the current flow's task runner, all submitted at once."""

    def run(stage: ExportStage, calls: list[Call]) -> list[Receipt]:
        futures = [export_part_task.submit(ws_uri, stage, method, args) for method, args in calls]
        return [f.result() for f in futures]

    return run


@flow(name="export-pool")
def export_pool_flow(ws_uri: str, shard_rows: int = SHARD_ROWS,
                     rows_per_partition: int = ROWS_PER_PARTITION) -> dict[str, Any]:
    """The active pool as table `curated`, by tasks on the flow's task runner (`synpref bench
    scale`); the figures of its tasks."""
    started = time.perf_counter()
    done = run_export(Workspace(ws_uri), ExportStage("pool", shard_rows=shard_rows), dataset_card,
                      run=prefect_tasks(ws_uri), rows_per_partition=rows_per_partition)
    return {"rows": done.rows, "shards": done.shards, "tasks": done.tasks, "pids": done.pids,
            "task_seconds": done.task_seconds, "task_peak_rss_mb": done.task_peak_rss_mb,
            "seconds": round(time.perf_counter() - started, 3)}


@task(name="embed-partition", retries=1, cache_policy=NO_CACHE)
def embed_partition_task(ws_uri: str, stage: EmbedStage, partition: Partition) -> Receipt:
    """One partition's missing vectors as uncommitted parts; its receipt (the encoder stays loaded
    in the worker process for its next partitions)."""
    return stage.run(Workspace(ws_uri), partition)


def run_embed(ws: Workspace, stage: EmbedStage, rows_per_partition: int,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Embedding as partition tasks on the current flow's task runner, then one keyed commit;
    `progress` hears (pairs of finished partitions, pairs planned) as each task ends."""
    started = time.perf_counter()
    partitions = plan_partitions(ws, rows_per_partition)
    total, done = sum(p.rows for p in partitions), 0
    if progress is not None and partitions:
        progress(0, total)
    # Encoders on a GPU cluster run one per GPU worker (flows.placement); on CPUs nothing is asked.
    wants_gpu = stage.cfg.device != "cpu"
    with on_gpu_workers() if wants_gpu else contextlib.nullcontext():
        futures = {embed_partition_task.submit(ws.uri, stage, p): p for p in partitions}
    receipts: list[Receipt] = []
    failed: BaseException | None = None
    for future in as_completed(list(futures)):
        try:
            receipts.append(future.result())
        except BaseException as exc:  # keep collecting: the others' parts must be discarded too
            failed = failed or exc
        done += futures[future].rows
        if progress is not None:
            progress(done, total)
    try:
        if failed is not None:
            raise failed
        stage.commit(ws, receipts)
    except BaseException:
        discard(ws, stage.table, [p for r in receipts for p in r["parts"]])
        raise
    return receipt_summary(stage, receipts, time.perf_counter() - started)


@flow(name="embed")
def embed_flow(ws_uri: str, cfg: EmbedConfig, view: str,
               rows_per_partition: int = ROWS_PER_PARTITION) -> dict[str, Any]:
    """The active pool's missing vectors of `cfg`'s model in `view`, by partition tasks on the
    flow's task runner; progress goes to the step the calling flow is in (`step_progress`)."""
    from flows.progress import step_progress

    return run_embed(Workspace(ws_uri), EmbedStage(cfg, view), rows_per_partition,
                     progress=step_progress("encoded"))
