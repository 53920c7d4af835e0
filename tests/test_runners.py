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
