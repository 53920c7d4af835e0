"""Scoring engines are reused per worker process, and GPU tasks land only on GPU workers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from prefect import flow, task

from flows import engines
from flows.placement import cluster_gpus, on_gpu_workers
from flows.runners import local_gpu_cluster, make_task_runner
from flows.tasks import score_shard_task
from pipeline.rm import load_rm
from pipeline.store import Workspace
from tests import flow_helpers

curated_run = flow_helpers.curated_run
prefect_api = flow_helpers.prefect_api

pytestmark = pytest.mark.slow


def test_a_worker_loads_each_round_model_once_and_closes_the_one_it_replaces(
    curated_run: dict[str, Any], tmp_path: Path
) -> None:
    shutil.copytree(curated_run["config"].workspace, tmp_path / "ws")
    ws = Workspace(str(tmp_path / "ws"))
    ids = sorted(pl.from_arrow(ws.read("pool", ["pair_id"]))["pair_id"].to_list())[:30]  # type: ignore[index]
    engines.release()
    before = engines.stats()
    first = score_shard_task.fn(ws.uri, "rounds/1/rm", ids[:15], 1, "rm")
    second = score_shard_task.fn(ws.uri, "rounds/1/rm", ids[15:], 1, "rm")
    after_round1 = engines.stats()
    assert after_round1["loads"] - before["loads"] == 1 and after_round1["held"] == 1
    fresh = load_rm(ws, "rounds/1/rm")
    from pipeline.pool import load_records

    raw = np.asarray(fresh.score(load_records(ws, ids)), dtype=np.float64).reshape(len(ids), 2)
    reused = np.concatenate([first.column("r_chosen").to_numpy(), second.column("r_chosen").to_numpy()])
    assert np.allclose(reused, raw[:, 0], atol=1e-6)  # the reused engine scores as a fresh one

    score_shard_task.fn(ws.uri, "rounds/2/rm", ids[:5], 2, "rm")
    switched = engines.stats()
    assert switched["loads"] - before["loads"] == 2 and switched["closes"] - before["closes"] == 1
    engines.release()
    assert engines.stats()["held"] == 0 and engines.stats()["closes"] - before["closes"] == 2


@task
def where_am_i() -> int:
    return os.getpid()


def test_gpu_tasks_go_only_to_workers_that_offer_a_gpu(prefect_api: str) -> None:
    """The local GPU cluster synpref starts on a GPU machine (here for one GPU): its GPU worker is
    pinned and offers the GPU resource, the CPU worker sees no GPU; every task submitted under
    `on_gpu_workers` runs on the GPU worker; a thread runner asks for nothing."""
    from distributed import Client

    with local_gpu_cluster(gpus=1, workers=1) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        info = client.scheduler_info()["workers"]
        seen = client.run(lambda: (os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")))
        gpu_pid = next(pid for address, (pid, _) in seen.items() if info[address]["resources"].get("GPU"))
        assert sorted(devices for _, devices in seen.values()) == ["", "0"]
        runner = make_task_runner("dask", address=cluster.scheduler_address)

        @flow(task_runner=runner)
        def placed() -> tuple[bool, list[int], float]:
            from prefect.context import FlowRunContext

            gpus = cluster_gpus(FlowRunContext.get().task_runner)  # type: ignore[union-attr]
            with on_gpu_workers() as asked:
                futures = [where_am_i.submit() for _ in range(6)]
            return asked, [f.result() for f in futures], gpus

        asked, pids, gpus = placed()
    assert asked and gpus == 1.0
    assert set(pids) == {gpu_pid}

    @flow(task_runner=make_task_runner("local"))
    def on_threads() -> bool:
        with on_gpu_workers() as asked_threads:
            return asked_threads

    assert on_threads() is False


def test_judging_runs_in_shard_tasks_on_dask_workers_and_judges_as_the_local_runner(
    curated_run: dict[str, Any], dask_address: str, tmp_path: Path
) -> None:
    from flows.judging import judge_in_shards
    from flows.labeling import judge_configs
    from flows.trust import per_judge_verdicts

    config = curated_run["config"]
    shutil.copytree(config.workspace, tmp_path / "ws")
    ws = Workspace(str(tmp_path / "ws"))
    ids = sorted(pl.from_arrow(ws.read("pool", ["pair_id"]))["pair_id"].to_list())[:40]  # type: ignore[index]
    judges = judge_configs(config, "rounds/1/gold-rm")
    names = [j.name for j in judges]

    @flow(task_runner=make_task_runner("dask", address=dask_address))
    def on_dask() -> dict[str, Any]:
        return judge_in_shards(ws, judges, config.embed, ids, 95, 7, shard_rows=12, max_parallel=4)

    @flow(task_runner=make_task_runner("local"))
    def on_threads() -> dict[str, Any]:
        return judge_in_shards(ws, judges, config.embed, ids, 96, 7, shard_rows=40)

    sharded, local = on_dask(), on_threads()
    assert sharded["shards"] == 4 and local["shards"] == 1
    assert sharded["worker_pids"] and os.getpid() not in sharded["worker_pids"]
    assert local["worker_pids"] == [os.getpid()]
    assert sharded["judgments_written"] == local["judgments_written"] > 0
    dask_verdicts = per_judge_verdicts(ws, names, ids, 95)
    local_verdicts = per_judge_verdicts(ws, names, ids, 96)
    assert dask_verdicts.sort(["pair_id", "judge"]).equals(local_verdicts.sort(["pair_id", "judge"]))
    # A re-run finds every shard's judgments stored and writes none.
    assert on_threads()["judgments_written"] == 0


def test_a_tensor_parallel_judge_needs_gpus_and_its_shards_ask_for_them(tmp_path: Path) -> None:
    from pipeline.judges import build_judges
    from pipeline.judges.vllm_offline import get_engine
    from pipeline.models import cuda_available
    from schemas.config import JudgeConfig
    from schemas.errors import ConfigError

    config = JudgeConfig(name="big", kind="vllm", model=str(tmp_path / "model"), tensor_parallel_size=4)
    (judge,) = build_judges([config])
    assert judge.tensor_parallel_size == 4  # type: ignore[attr-defined]
    if not cuda_available():
        with pytest.raises(ConfigError, match="tensor_parallel_size 4 needs GPUs"):
            get_engine(str(tmp_path / "model"), tensor_parallel_size=4)
