"""Partition tasks of stage 2, scoring and judging on the flow's task runner, in windows.

A stage object (pipeline.score_stage, pipeline.stage2_stage) is sent with each task next to its
`Partition` (row ranges of pool parts, planned from the manifest); the task reads its own rows,
writes its own part and returns a receipt. The driver keeps receipts only: `max_parallel` tasks
are in flight at a time, and `on_window` can commit a window's parts before the next starts (so
a killed scoring run keeps what it finished). Tasks that load models ask for a GPU where the
cluster has one (flows.placement). Called outside a flow, the tasks run in this process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from pipeline.parts import Receipt, discard
from pipeline.stage import Partition
from pipeline.store import Workspace

Window = Callable[[list[Receipt]], None]


@task(name="stage2-partition", retries=1, cache_policy=NO_CACHE)
def stage2_partition_task(ws_uri: str, stage: Any, partition: Partition) -> Receipt:
    """A stage-2 candidates or decisions task: `stage.run` over one partition."""
    return stage.run(Workspace(ws_uri), partition)  # type: ignore[no-any-return]


@task(name="retrieve-partition", retries=1, cache_policy=NO_CACHE)
def retrieve_partition_task(ws_uri: str, stage: Any, partition: Partition) -> Receipt:
    """A retrieval task (pipeline/retrieve_stage.py): one partition's best hits per query."""
    return stage.run(Workspace(ws_uri), partition)  # type: ignore[no-any-return]


@task(name="priority-partition", retries=1, cache_policy=NO_CACHE)
def priority_partition_task(ws_uri: str, stage: Any, partition: Partition) -> Receipt:
    """A round-1 batch task (pipeline/priority_stage.py): one partition's candidates per batch."""
    return stage.run(Workspace(ws_uri), partition)  # type: ignore[no-any-return]


@task(name="gather-partition", retries=1, cache_policy=NO_CACHE)
def gather_partition_task(ws_uri: str, stage: Any, partition: Partition) -> Receipt:
    """A gather task (pipeline/gather.py): one partition's rows of an id list, to scratch."""
    return stage.run(Workspace(ws_uri), partition)  # type: ignore[no-any-return]


def run_partitions(ws: Workspace, work: Task[..., Receipt], stage: Any, partitions: list[Partition], *,
                   max_parallel: int, gpus: float = 0.0, table: str | None = None,
                   on_window: Window | None = None,
                   progress: Callable[[int, int], None] | None = None) -> tuple[list[Receipt], bool]:
    """Run `work(ws.uri, stage, partition)` for every partition, `max_parallel` at a time.

    Returns the receipts in partition order and whether GPU placement was asked for. When a task
    fails, the parts of `table` that the finished tasks wrote and no window committed are deleted.
    """
    from prefect.context import FlowRunContext

    from flows.placement import on_gpu_workers

    in_flow = FlowRunContext.get() is not None
    receipts: list[Receipt] = []
    pending: list[Receipt] = []
    placed = False
    total, done = sum(p.rows for p in partitions), 0
    try:
        for start in range(0, len(partitions), max(1, max_parallel)):
            window = partitions[start:start + max(1, max_parallel)]
            if not in_flow:
                finished = [work.fn(ws.uri, stage, p) for p in window]
            else:
                with on_gpu_workers(gpus) if gpus else contextlib.nullcontext(False) as asked:
                    futures = [work.submit(ws.uri, stage, p) for p in window]
                placed = placed or bool(asked)
                finished = []
                failed: BaseException | None = None
                for future in futures:  # collect every result: failed windows' parts are discarded too
                    try:
                        finished.append(future.result())
                    except BaseException as exc:
                        failed = failed or exc
                if failed is not None:
                    pending += finished
                    raise failed
            pending += finished
            if on_window is not None:
                on_window(finished)
                pending = []
            receipts += finished
            done += sum(p.rows for p in window)
            if progress is not None:
                progress(done, total)
    except BaseException:
        if table is not None:
            discard(ws, table, [part for r in pending for part in r["parts"]])
        raise
    return sorted(receipts, key=lambda r: int(r["task"])), placed


def run_task(work: Task[..., Any], *args: Any) -> Any:
    """One task on the flow's runner (in this process outside a flow); its result."""
    from prefect.context import FlowRunContext

    return work.submit(*args).result() if FlowRunContext.get() is not None else work.fn(*args)


def pids(receipts: list[Receipt]) -> list[int]:
    """The worker PIDs that ran the tasks."""
    return sorted({int(r["pid"]) for r in receipts if "pid" in r})
