"""Shard tasks on a local Dask cluster give the same scores as the local thread pool."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from prefect import flow, task

from flows.runners import RunnerUnavailable, make_task_runner
from flows.scoring import score_in_shards
from pipeline.store import Workspace
from tests import flow_helpers

curated_run = flow_helpers.curated_run
prefect_api = flow_helpers.prefect_api

pytestmark = pytest.mark.slow


@task
def worker_address() -> str:
    from distributed import get_worker

    return get_worker().address


def test_dask_cluster_scores_shards_like_the_local_runner(
    curated_run: dict[str, Any], dask_address: str, tmp_path: Path
) -> None:
    source = Path(curated_run["config"].workspace)
    shutil.copytree(source, tmp_path / "ws")
    ws = Workspace(str(tmp_path / "ws"))
    pair_ids = sorted(pl.from_arrow(ws.read("pool", ["pair_id"]))["pair_id"].to_list())  # type: ignore[index]

    @flow(task_runner=make_task_runner("dask", address=dask_address))
    def score_on_dask() -> tuple[dict[str, Any], set[str]]:
        stats = score_in_shards(ws, "rounds/1/rm", pair_ids, 90, "rm", shard_rows=15, max_parallel=4)
        workers = {worker_address.submit().result() for _ in range(4)}
        return stats, workers

    stats, workers = score_on_dask()
    assert stats["shards"] == -(-len(pair_ids) // 15) and stats["scored"] == len(pair_ids)
    assert all(address.startswith("tcp://") for address in workers)

    @flow(task_runner=make_task_runner("local"))
    def score_locally() -> dict[str, Any]:
        return score_in_shards(ws, "rounds/1/rm", pair_ids, 91, "rm", shard_rows=1000)

    assert score_locally()["scored"] == len(pair_ids)
    scores = pl.from_arrow(ws.read("scores"))
    dask = scores.filter(pl.col("round") == 90).sort("pair_id")  # type: ignore[union-attr]
    local = scores.filter(pl.col("round") == 91).sort("pair_id")  # type: ignore[union-attr]
    assert dask["pair_id"].to_list() == local["pair_id"].to_list() == pair_ids
    assert (dask["p"] - local["p"]).abs().max() < 1e-5


def test_unknown_runner_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown runner 'spark'"):
        make_task_runner("spark")
    assert issubclass(RunnerUnavailable, RuntimeError)


def test_retrieval_tasks_on_dask_find_what_one_local_task_finds(
    curated_run: dict[str, Any], dask_address: str, tmp_path: Path
) -> None:
    import os

    from flows.partition_tasks import retrieve_partition_task, run_partitions
    from flows.round_steps import LABELED_TABLES
    from pipeline.embed import active_pair_ids
    from pipeline.retrieve import retrieve

    shutil.copytree(Path(curated_run["config"].workspace), tmp_path / "ws")
    ws, config = Workspace(str(tmp_path / "ws")), curated_run["config"]
    queries = active_pair_ids(ws)[:12]
    scores = pl.DataFrame({"pair_id": queries, "p": [0.2, 0.7] * 6})
    kwargs: dict[str, Any] = {"exclude_tables": LABELED_TABLES, "embed": False}
    local, local_stats = retrieve(ws, config.embed, scores, rows_per_partition=10**6, **kwargs)

    @flow(task_runner=make_task_runner("dask", address=dask_address))
    def retrieve_on_dask() -> tuple[pl.DataFrame, dict[str, Any]]:
        def on_dask(stage: Any, partitions: list[Any], merge: Any) -> None:
            run_partitions(ws, retrieve_partition_task, stage, partitions, max_parallel=3, on_window=merge)

        return retrieve(ws, config.embed, scores, rows_per_partition=15, run_map=on_dask, **kwargs)

    found, stats = retrieve_on_dask()
    assert local.height > 12 and found.equals(local)
    assert local_stats["tasks"] == 1 and stats["tasks"] >= 3
    assert stats["unembedded"] == 0
    assert stats["examined"] == local_stats["examined"] == len(active_pair_ids(ws))
    assert stats["worker_pids"] and os.getpid() not in stats["worker_pids"]
