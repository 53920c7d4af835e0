"""Export tasks on a real Dask cluster (2 worker processes): the same files, byte for byte, as on the
local thread pool, from tasks that ran in the workers' processes, with one polars thread each."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task

from flows.runners import make_task_runner
from flows.stages import prefect_tasks
from pipeline.clean import exact_dedup
from pipeline.export import dataset_card
from pipeline.export_stage import ExportStage, run_export
from pipeline.store import Workspace
from tests import flow_helpers
from tests.test_stage import sample_workspace

prefect_api = flow_helpers.prefect_api
pytestmark = pytest.mark.slow


@task
def polars_threads() -> tuple[int, str | None]:
    import polars as pl

    return pl.thread_pool_size(), os.environ.get("POLARS_MAX_THREADS")


def export_on(runner: str, root: Path, address: str | None = None
              ) -> tuple[Workspace, dict[str, Any], list[tuple[str, str]]]:
    ws = sample_workspace(root)
    exact_dedup(ws)
    out = root / "out"

    @flow(task_runner=make_task_runner(runner, address=address, workers=2))
    def export() -> dict[str, Any]:
        done = run_export(ws, ExportStage("pool", shard_rows=300), dataset_card, out_dir=str(out),
                          run=prefect_tasks(ws.uri), rows_per_partition=700)
        threads = {polars_threads.submit().result() for _ in range(4)}
        return {"pids": done.pids, "tasks": done.tasks, "rows": done.rows, "threads": threads}

    result = export()
    files = sorted((str(p.relative_to(out)), hashlib.sha256(p.read_bytes()).hexdigest())
                   for p in out.rglob("*") if p.is_file())
    return ws, result, files


def test_export_on_dask_workers_writes_the_files_the_local_runner_writes(
    prefect_api: str, dask_address: str, tmp_path: Path
) -> None:
    local_ws, local, local_files = export_on("local", tmp_path / "local")
    dask_ws, dask, dask_files = export_on("dask", tmp_path / "dask", dask_address)
    assert dask_files == local_files and len(local_files) >= 3  # shards + card, byte for byte
    sha = [[s["sha256"] for s in w.manifest("curated")["shards"]] for w in (local_ws, dask_ws)]
    assert sha[0] == sha[1] and len(sha[0]) >= 2
    assert dask["rows"] == local["rows"] > 0 and dask["tasks"] == local["tasks"] >= 6
    assert local["pids"] == [os.getpid()]  # threads of this process
    assert dask["pids"] and os.getpid() not in dask["pids"]  # the workers' processes
    assert dask["threads"] == {(1, "1")}  # one polars thread per worker process
    assert dask_ws.verify() == [] and dask_ws.listdir("_shuffle/export") == []
