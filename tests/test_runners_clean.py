"""The clean stages as partition and bucket tasks on a real Dask cluster (2 worker processes):
the same `dropped` table, byte for byte, as on the local thread pool, from tasks that ran in the
workers' processes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from flows.clean import clean_flow
from pipeline.store import Workspace
from schemas.config import SynprefConfig
from tests import flow_helpers
from tests.test_stage import BENCHMARK, sample_workspace

prefect_api = flow_helpers.prefect_api
pytestmark = pytest.mark.slow


def dropped_digest(ws: Workspace) -> str:
    return hashlib.sha256(ws.read("dropped").to_pandas().to_json(orient="records").encode()).hexdigest()


def cleaned(root: Path, runner: str, address: str | None = None) -> tuple[Workspace, dict[str, Any]]:
    ws = sample_workspace(root)
    config = SynprefConfig(workspace=ws.uri, clean={"benchmarks": [str(BENCHMARK)]},
                           semantic_dedup={"enabled": False})
    return ws, clean_flow(config, runner=runner, runner_address=address, workers=2, rows_per_partition=700)


def test_clean_on_dask_workers_writes_the_dropped_table_the_local_runner_writes(
    prefect_api: str, dask_address: str, tmp_path: Path
) -> None:
    local_ws, local = cleaned(tmp_path / "local", "local")
    dask_ws, dask = cleaned(tmp_path / "dask", "dask", dask_address)
    for stage in ("exact_dedup", "decontaminate"):
        assert dask[stage]["dropped"] == local[stage]["dropped"] > 0
        assert dask[stage]["examined"] == local[stage]["examined"]
        assert dask[stage]["tasks"] == local[stage]["tasks"] >= 2
        assert local[stage]["pids"] == [os.getpid()]  # threads of this process
        assert dask[stage]["pids"] and os.getpid() not in dask[stage]["pids"]  # worker processes
    assert dropped_digest(dask_ws) == dropped_digest(local_ws)
    # the same part files, byte for byte, in the same order
    sha = [[s["sha256"] for s in w.manifest("dropped")["shards"]] for w in (local_ws, dask_ws)]
    assert sha[0] == sha[1]
    assert dask_ws.verify() == []  # every part the tasks wrote was committed
    assert not dask_ws.listdir("_shuffle/exact-dedup") and not dask_ws.listdir("_shuffle/decontamination")


def test_clean_on_ray_writes_the_dropped_table_the_local_runner_writes(
    prefect_api: str, tmp_path: Path
) -> None:
    pytest.importorskip("prefect_ray")
    local_ws, _ = cleaned(tmp_path / "local", "local")
    ray_ws, ray = cleaned(tmp_path / "ray", "ray")
    for stage in ("exact_dedup", "decontaminate"):
        assert ray[stage]["tasks"] >= 2 and os.getpid() not in ray[stage]["pids"]  # Ray workers
    sha = [[s["sha256"] for s in w.manifest("dropped")["shards"]] for w in (local_ws, ray_ws)]
    assert sha[0] == sha[1]


def test_clean_command_runs_its_tasks_on_dask_workers(prefect_api: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli.main import app
    from tests.test_stage import cleaning_drops

    local_ws, _ = cleaned(tmp_path / "local", "local")
    ws = sample_workspace(tmp_path / "cli")
    result = CliRunner().invoke(app, ["clean", "-w", ws.uri, "-b", str(BENCHMARK), "--runner", "dask",
                                      "--workers", "2"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "exact-dedup" in result.output and "decontamination" in result.output
    assert cleaning_drops(ws) == cleaning_drops(local_ws)  # the partition size does not matter
    result = CliRunner().invoke(app, ["clean", "-w", ws.uri, "--runner", "spark"])
    assert result.exit_code != 0 and "--runner: choose one of local, dask, ray" in result.output


def test_clean_first_compacts_small_ingests_on_dask_workers_and_drops_the_same_pairs(
    prefect_api: str, dask_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import polars as pl

    from pipeline import ingest_parts
    from pipeline.pool import clustered_share
    from tests.test_stage import cleaning_drops

    monkeypatch.setattr(ingest_parts, "PART_ROWS", 1_000)  # ranges of about 1,000 of the sample's pairs
    local_ws, local = cleaned(tmp_path / "local", "local")  # compact_rows 200,000: left as it is
    assert local["compact"]["committed"] is False and "below clean.compact_rows" in local["compact"]["reason"]
    assert clustered_share(local_ws) == 0.0
    ws = sample_workspace(tmp_path / "dask")
    config = SynprefConfig(workspace=ws.uri, clean={"benchmarks": [str(BENCHMARK)], "compact_rows": 1_000},
                           semantic_dedup={"enabled": False})
    stats = clean_flow(config, runner="dask", runner_address=dask_address, workers=2, rows_per_partition=700)
    compact = stats["compact"]
    assert compact["committed"] and compact["index_kept"] and compact["rows"] == ws.row_count("pool")
    assert compact["parts_written"] == -(-compact["rows"] // 1_000)
    assert clustered_share(ws) == 1.0 and ws.verify() == [] and not ws.listdir("_compact")
    # every pair and number kept, and the cleaning stages drop what they drop on the loose parts
    pools = [pl.from_arrow(w.read("pool")).sort("ingest_seq") for w in (local_ws, ws)]  # type: ignore[union-attr]
    assert pools[0].equals(pools[1])
    assert cleaning_drops(ws) == cleaning_drops(local_ws)
    assert stats["exact_dedup"]["dropped"] == local["exact_dedup"]["dropped"] > 0
