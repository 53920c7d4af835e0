"""GPU placement of shard tasks: tasks that need a GPU ask the cluster for one.

On Ray a GPU task is submitted with `num_gpus` (prefect-ray's `remote_options`), so Ray places
it on a node with a free GPU and sets its CUDA_VISIBLE_DEVICES: shards spread over every GPU of
the cluster (data parallel). On Dask it is annotated with the `GPU` resource, which only workers
started with `--resources GPU=1` (one worker per GPU, as dask-cuda starts them) offer. The
choice is automatic: a cluster that advertises GPUs gets the request, one without (a laptop,
this project's CI) runs the same tasks on CPUs. The local thread runner needs no placement: its
tasks share the flow's process and its devices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def runner_kind(task_runner: Any) -> str:
    """"dask", "ray" or "local": by the Prefect runner class the runner is (or derives from)."""
    names = {cls.__name__ for cls in type(task_runner).__mro__}
    return "dask" if "DaskTaskRunner" in names else "ray" if "RayTaskRunner" in names else "local"


def cluster_gpus(task_runner: Any) -> float:
    """GPUs the runner's cluster advertises (0 for the local thread runner or a CPU cluster)."""
    kind = runner_kind(task_runner)
    if kind == "dask":
        workers = task_runner.client.scheduler_info().get("workers", {})
        return float(sum(w.get("resources", {}).get("GPU", 0) for w in workers.values()))
    if kind == "ray":
        import ray

        return float(ray.cluster_resources().get("GPU", 0))
    return 0.0


def _current_runner() -> Any:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.task_runner if ctx is not None else None


@contextlib.contextmanager
def on_gpu_workers(gpus: float = 1.0, task_runner: Any = None) -> Iterator[bool]:
    """Submit the block's tasks with a request for `gpus` GPUs each when the cluster has any.

    Yields whether the request was made, so the caller can say where its shards ran."""
    runner = task_runner if task_runner is not None else _current_runner()
    if runner is None or cluster_gpus(runner) <= 0:
        yield False
        return
    if runner_kind(runner) == "ray":
        from prefect_ray.context import remote_options

        with remote_options(num_gpus=gpus):
            yield True
        return
    import dask

    with dask.annotate(resources={"GPU": gpus}):
        yield True
