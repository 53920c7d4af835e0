"""Where shard tasks run: Prefect's thread pool (local), a Dask cluster, or a Ray cluster.

prefect-dask and prefect-ray are optional (`pip install "synpref[scale]"`); they are imported
only when asked for, with a one-line message naming the extra when they are missing. Worker
processes started here run polars with one thread each (POLARS_MAX_THREADS, unless set in the
environment): N workers on N cores, not N polars pools of N threads each.

On a machine with GPUs the local Dask cluster gets one worker per GPU, pinned to it
(CUDA_VISIBLE_DEVICES) and offering the `GPU` resource, as dask-cuda's LocalCUDACluster starts
them: embedding, scoring and judge shards then run data parallel, one per GPU, and CPU stages
use the CPU workers beside them. Ray detects a node's GPUs itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from schemas.errors import ConfigError, SynprefError

RUNNERS = ("local", "dask", "ray")


class RunnerUnavailable(SynprefError, RuntimeError):
    """The requested task runner's package is not installed."""


def worker_env(threads: int = 1) -> dict[str, str]:
    """Environment of a worker process: polars reads POLARS_MAX_THREADS when it is imported."""
    return {"POLARS_MAX_THREADS": os.environ.get("POLARS_MAX_THREADS", str(max(1, threads)))}


def dask_worker_env(threads: int = 1) -> dict[str, str]:
    """A local Dask worker's environment: `worker_env`, and the flow's Prefect API when the flow
    runs Prefect's temporary server. Without it each worker's first task started a temporary
    server of its own (about 10 s and 300 MB per worker here) and reported its task runs there,
    out of the flow's sight."""
    env = worker_env(threads)
    if api := prefect_api_for_workers():
        env["PREFECT_API_URL"] = api
    return env


def dask_cluster_kwargs(workers: int | None = None, threads_per_worker: int = 1) -> dict[str, Any]:
    """A local Dask cluster of worker processes, each with `threads_per_worker` task and polars threads."""
    return {"n_workers": workers or 2, "threads_per_worker": threads_per_worker, "processes": True,
            "dashboard_address": None, "env": dask_worker_env(threads_per_worker)}


def visible_gpus() -> int:
    """CUDA GPUs this process sees (0 without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def local_gpu_cluster(gpus: int, workers: int | None = None, threads_per_worker: int = 1) -> Any:
    """A local Dask cluster: one worker per GPU (pinned, offering `GPU=1`) and `workers` CPU workers.

    GPU workers run one task at a time (a model per GPU); CPU workers see no GPU, so a CPU stage
    never takes GPU memory.
    """
    from distributed import Nanny, Scheduler, SpecCluster

    spec: dict[str, Any] = {}
    env = dask_worker_env(threads_per_worker)
    for gpu in range(gpus):
        spec[f"gpu-{gpu}"] = {"cls": Nanny, "options": {
            "nthreads": 1, "resources": {"GPU": 1}, "env": {**env, "CUDA_VISIBLE_DEVICES": str(gpu)}}}
    for cpu in range(workers or 2):
        spec[f"cpu-{cpu}"] = {"cls": Nanny, "options": {
            "nthreads": threads_per_worker, "env": {**env, "CUDA_VISIBLE_DEVICES": ""}}}
    return SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": None}},
                       workers=spec, name="synpref-local-gpu")


def prefect_api_for_workers() -> str | None:
    """The Prefect API that worker processes must report to, when they cannot find it themselves.

    With no `PREFECT_API_URL`, the flow process runs Prefect's temporary server; a Ray worker
    would start one of its own and time out, a Dask worker one of its own that the flow never
    hears from. The flow's server is started here (Prefect keeps one
    per process, so the flow's client gets the same) and its URL goes to the workers.
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None  # workers read the same setting (environment or profile) as the flow
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    return str(server.api_url)


def make_task_runner(name: str = "local", *, address: str | None = None, workers: int | None = None) -> Any:
    """A Prefect task runner by name.

    `address`: an existing cluster (`tcp://host:8786` for Dask, `ray://host:10001` or `auto` for
    Ray); without it a local cluster starts for the flow run and stops after it.
    `workers`: local threads / Dask workers to start (default: Prefect's / Dask's own).
    """
    if name == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers) if workers else ThreadPoolTaskRunner()
    if name == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise RunnerUnavailable(
                'the dask runner needs prefect-dask: install "synpref[scale]"'
            ) from exc
        if address:
            return DaskTaskRunner(address=address)
        # Worker processes, as on a real cluster; on a GPU machine, one more per GPU.
        gpus = visible_gpus()
        if gpus:
            return DaskTaskRunner(cluster_class=local_gpu_cluster,
                                  cluster_kwargs={"gpus": gpus, "workers": workers})
        return DaskTaskRunner(cluster_kwargs=dask_cluster_kwargs(workers))
    if name == "ray":
        try:
            from flows.ray_runner import DeliveringRayTaskRunner
        except ImportError as exc:
            raise RunnerUnavailable('the ray runner needs prefect-ray: install "synpref[scale]"') from exc
        if not address:
            return DeliveringRayTaskRunner(init_kwargs=ray_init_kwargs(workers))
        return DeliveringRayTaskRunner(address=address, init_kwargs=ray_init_kwargs(workers, local=False))
    raise ConfigError(f"unknown runner {name!r}; choose one of {', '.join(RUNNERS)}")


def ray_init_kwargs(workers: int | None = None, *, local: bool = True) -> dict[str, Any]:
    """`ray.init` arguments: worker environment, no dashboard, `workers` CPUs for a local instance."""
    env = worker_env(1)
    if local and (api := prefect_api_for_workers()):
        env["PREFECT_API_URL"] = api
    kwargs: dict[str, Any] = {"include_dashboard": False, "runtime_env": {"env_vars": env}}
    if workers:
        kwargs["num_cpus"] = workers
    return kwargs


@contextmanager
def run_cluster(name: str = "local", address: str | None = None, workers: int | None = None
                ) -> Iterator[str | None]:
    """One local cluster for every subflow of a run; the address the subflows' runners should use.

    Without it each subflow's Dask or Ray runner started (and stopped) a cluster of its own, and
    every worker imported its libraries and loaded its models again, step after step. The
    cluster started here lives until the run ends, so workers keep what they loaded (embedding
    models, one engine per worker). With `address` (an existing cluster) or the local runner there
    is nothing to start. Ray needs no address: a runner finds Ray initialised in this process and
    uses it without shutting it down.
    """
    if address or name == "local":
        yield address
        return
    if name == "dask":
        from distributed import LocalCluster

        gpus = visible_gpus()
        cluster = local_gpu_cluster(gpus, workers) if gpus else LocalCluster(**dask_cluster_kwargs(workers))
        try:
            yield str(cluster.scheduler_address)
        finally:
            cluster.close()
        return
    if name == "ray":
        import ray

        if ray.is_initialized():
            yield None
            return
        ray.init(**ray_init_kwargs(workers))
        try:
            yield None
        finally:
            ray.shutdown()
        return
    raise ConfigError(f"unknown runner {name!r}; choose one of {', '.join(RUNNERS)}")
