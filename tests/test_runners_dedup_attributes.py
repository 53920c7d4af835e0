"""Semantic dedup and attributes as tasks on a real Dask cluster (the session's 2 worker
processes): the same `dropped` and attributes parts, byte for byte, as the local thread pool, from
tasks that ran in the workers' processes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from flows.clean import semantic_dedup_flow
from flows.runners import make_task_runner
from flows.stage1 import attributes_flow
from pipeline.store import Workspace
from schemas.config.embed import IndexConfig, SemanticDedupConfig
from schemas.config.judges import AttributesConfig
from tests import flow_helpers
from tests.dedup_vectors import FAST, planted_pool
from tests.embed_pool import hh_records, write_pool

prefect_api = flow_helpers.prefect_api
pytestmark = pytest.mark.slow


def part_hashes(ws: Workspace, table: str) -> list[str]:
    return [s["sha256"] for s in ws.manifest(table)["shards"]]


def on_both(root: Path, tmp_path: Path, address: str, run: Any) -> tuple[tuple[Workspace, Any], ...]:
    out = []
    for name, runner in (("local", make_task_runner("local", workers=2)),
                         ("dask", make_task_runner("dask", address=address))):
        shutil.copytree(root, tmp_path / name)
        ws = Workspace(tmp_path / name)
        out.append((ws, run(ws, runner)))
    return tuple(out)


def test_semantic_dedup_on_dask_workers_writes_the_local_runners_dropped_parts(
    prefect_api: str, dask_address: str, tmp_path: Path
) -> None:
    root = tmp_path / "planted"
    pool = planted_pool(Workspace(root))

    def run(ws: Workspace, runner: Any) -> dict[str, Any]:
        return semantic_dedup_flow.with_options(task_runner=runner)(
            ws.uri, FAST, SemanticDedupConfig(), IndexConfig(), rows_per_partition=200, cell_rows=100)

    (local_ws, local), (dask_ws, dask) = on_both(root, tmp_path, dask_address, run)
    assert dask["dropped"] == local["dropped"] == len(pool.copies)
    assert dask["tasks_by_phase"] == local["tasks_by_phase"] and dask["tasks_by_phase"]["reduce"] >= 2
    assert local["pids"] == [os.getpid()]  # threads of this process
    assert dask["pids"] and os.getpid() not in dask["pids"]  # the workers' processes
    assert part_hashes(dask_ws, "dropped") == part_hashes(local_ws, "dropped")
    assert dask_ws.verify() == [] and not dask_ws.listdir("_shuffle/semantic-dedup")


def test_attributes_on_dask_workers_write_the_local_runners_parts(
    prefect_api: str, dask_address: str, shared_raw: Path, tmp_path: Path
) -> None:
    root = tmp_path / "pool"
    write_pool(Workspace(root), hh_records(shared_raw, 60))

    def run(ws: Workspace, runner: Any) -> dict[str, Any]:
        return attributes_flow.with_options(task_runner=runner)(
            ws.uri, AttributesConfig(kind="heuristic"), rows_per_partition=25)

    (local_ws, local), (dask_ws, dask) = on_both(root, tmp_path, dask_address, run)
    assert dask["generated"] == local["generated"] == 60 and dask["tasks"] == local["tasks"] == 3
    assert local["pids"] == [os.getpid()] and dask["pids"] and os.getpid() not in dask["pids"]
    assert len(part_hashes(local_ws, "attributes")) == 3  # one part per partition task
    assert part_hashes(dask_ws, "attributes") == part_hashes(local_ws, "attributes")
    assert dask_ws.verify() == []
