"""Ingest as per-file staging tasks on a real Dask cluster (2 worker processes) and an ordered
commit: the pool, quarantine and dropped parts the one-process ingest writes, byte for byte, from
tasks on the workers' PIDs; a worker killed while staging commits nothing, and a re-run completes
to the same pool."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.ingest import ingest_flow
from pipeline.ingest import ingest_source
from pipeline.store import Workspace
from schemas.config import SynprefConfig
from tests import flow_helpers

prefect_api = flow_helpers.prefect_api
pytestmark = pytest.mark.slow
DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
TABLES = ("pool", "quarantine", "dropped")
KILLED_FILE = "s0000/f000001"
"""The scratch folder of the first source's second file: its task dies after staging a batch."""


def bundled_sources() -> list[dict[str, Any]]:
    """examples/default's sources, after the hh-rlhf folder as one source (two files, two tasks):
    the single-file sources then repeat its pairs from other origins (duplicates in `dropped`)."""
    hh = DATA / "hh-rlhf"
    return [
        {"path": str(hh), "format": "hh-rlhf", "name": "hh-rlhf", "license": "MIT"},
        {"path": str(hh / "harmless-base" / "test.jsonl.gz"), "format": "hh-rlhf",
         "name": "hh-rlhf/harmless-base", "license": "MIT"},
        {"path": str(hh / "helpful-base" / "test.jsonl.gz"), "format": "hh-rlhf",
         "name": "hh-rlhf/helpful-base", "license": "MIT"},
        {"path": str(DATA / "ultrafeedback" / "eval_clean.jsonl"), "format": "prompt-chosen-rejected",
         "name": "ultrafeedback", "license": "MIT", "label_source": "ai"},
    ]


def config(root: Path) -> SynprefConfig:
    return SynprefConfig(workspace=str(root), sources=bundled_sources())


def part_hashes(ws: Workspace) -> dict[str, list[str]]:
    return {t: [s["sha256"] for s in ws.manifest(t)["shards"]] for t in TABLES if ws.has_table(t)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sources ingested one after another in this process (`synpref ingest`'s path)."""
    cfg = config(tmp_path_factory.mktemp("sequential") / "ws")
    ws = Workspace(cfg.workspace)
    stats = [ingest_source(ws, source).as_dict() for source in cfg.sources]
    return {"hashes": part_hashes(ws), "stats": stats}


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    """2 worker processes; a task whose worker dies fails at once (no rescheduling elsewhere)."""
    import dask
    from distributed import LocalCluster

    from flows.runners import dask_cluster_kwargs

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(**dask_cluster_kwargs(2)) as cluster:
        yield cluster.scheduler_address


def test_ingest_on_dask_workers_writes_the_parts_the_sequential_ingest_writes(
    prefect_api: str, dask_address: str, reference: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reference split each source's keys in one job, source after source; here every
    # source's keys are split in one pass of tasks (one per 500 staged rows, at most 16), each
    # over its own range of key buckets, each source's rows against the sources before it.
    monkeypatch.setattr("pipeline.ingest_together.REPEAT_JOB_ROWS", 500)
    hashes = reference["hashes"]
    assert [len(hashes[t]) > 0 for t in TABLES] == [True, True, True]
    assert sum(s["duplicates"] for s in reference["stats"]) > 0  # repeats across sources are recorded
    for runner, address in (("dask", dask_address), ("local", None)):
        cfg = config(tmp_path / runner / "ws")
        result = ingest_flow(cfg, runner=runner, runner_address=address, workers=2)
        ws = Workspace(cfg.workspace)
        assert part_hashes(ws) == hashes, runner  # sha256 per part, in commit order
        assert [r["tasks"] for r in result] == [2, 1, 1, 1]
        assert [r["repeat_tasks"] for r in result] == [16] * 4
        counted = ("rows_read", "added", "already_present", "duplicates", "quarantined", "dropped", "format")
        assert [{k: r[k] for k in counted} for r in result] == [
            {k: s[k] for k in counted} for s in reference["stats"]]
        # Each source says where its commit spent its time.
        assert all(set(r["phases"]) == {"repeats", "parts", "commit", "index"} for r in result)
        pids = {p for r in result for p in r["pids"]}
        if runner == "dask":
            assert pids and os.getpid() not in pids  # staged in the worker processes
        else:
            assert pids == {os.getpid()}
        assert ws.verify() == [] and not ws.listdir("_ingest")  # every part committed, scratch gone


def test_a_clustered_ingest_on_dask_workers_writes_the_parts_of_one_process(
    prefect_api: str, dask_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both waves of a clustered ingest (pipeline/ingest_parts.py) as tasks on the workers: the
    same part bytes, key ranges and numbers as the one-process clustered ingest."""
    from pipeline import ingest_parts

    monkeypatch.setattr(ingest_parts, "CLUSTER_ROWS", 1_000)
    monkeypatch.setattr(ingest_parts, "PART_ROWS", 500)
    sequential = Workspace(tmp_path / "sequential")
    for source in config(tmp_path).sources:
        ingest_source(sequential, source)
    ranges = [s.get(ingest_parts.KEY_RANGE) for s in sequential.manifest("pool")["shards"]]
    assert sum(r is not None for r in ranges) >= 8  # the sources of 1,000 new pairs or more cluster
    cfg = config(tmp_path / "dask")
    result = ingest_flow(cfg, runner="dask", runner_address=dask_address, workers=2)
    ws = Workspace(cfg.workspace)
    assert part_hashes(ws) == part_hashes(sequential)
    assert [s.get(ingest_parts.KEY_RANGE) for s in ws.manifest("pool")["shards"]] == ranges
    assert os.getpid() not in {p for r in result for p in r["pids"]}
    assert ws.verify() == [] and not ws.listdir("_ingest")


def _die_while_merging() -> None:
    """In a worker: end the process when a clustered ingest's second wave is about to write the
    part of the ids from 80 up."""
    from pipeline import ingest_parts

    write = ingest_parts.clustered_part

    def die_then_write(ws: Any, schema: Any, rows: Any, group_rows: int = ingest_parts.GROUP_ROWS) -> Any:
        if rows.column("pair_id")[0].as_py() >= "80":
            os._exit(1)
        return write(ws, schema, rows, group_rows)

    ingest_parts.clustered_part = die_then_write


def test_a_worker_killed_in_a_clustered_ingests_merge_commits_nothing_and_a_rerun_completes(
    prefect_api: str, dask_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client
    from distributed.scheduler import KilledWorker

    from pipeline import ingest_parts

    monkeypatch.setattr(ingest_parts, "CLUSTER_ROWS", 1_000)
    monkeypatch.setattr(ingest_parts, "PART_ROWS", 500)
    sequential = Workspace(tmp_path / "sequential")
    for source in config(tmp_path).sources:
        ingest_source(sequential, source)
    cfg = config(tmp_path / "ws")
    ws = Workspace(cfg.workspace)
    with Client(dask_address) as client:
        client.run(_die_while_merging)
        with pytest.raises(KilledWorker):
            ingest_flow(cfg, runner="dask", runner_address=dask_address)
        assert not any(ws.has_table(t) for t in TABLES)  # the first source failed: nothing committed
        assert ws.verify() == [] and not ws.listdir("_ingest")  # its merged parts deleted, no scratch
        client.restart(wait_for_workers=True)
        ingest_flow(cfg, runner="dask", runner_address=dask_address)
    assert part_hashes(ws) == part_hashes(sequential)


def test_ingest_command_stages_its_files_on_the_runner(
    prefect_api: str, dask_address: str, reference: dict[str, Any], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from flows.cli.main import app

    config = tmp_path / "synpref.toml"
    config.write_text("".join("[[sources]]\n" + "".join(f'{k} = "{v}"\n' for k, v in source.items())
                              for source in bundled_sources()), encoding="utf-8")
    ws = tmp_path / "ws"
    env = {"COLUMNS": "200", "NO_COLOR": "1"}
    args = ["ingest", "-c", str(config), "-w", str(ws)]
    result = CliRunner().invoke(app, [*args, "--runner", "dask", "--runner-address", dask_address], env=env)
    assert result.exit_code == 0, result.output
    assert "ultrafeedback" in result.output
    assert part_hashes(Workspace(ws)) == reference["hashes"]
    result = CliRunner().invoke(app, [*args, "--runner", "spark"], env=env)
    assert result.exit_code != 0 and "--runner: choose one of local, dask, ray" in result.output


def _die_while_staging(marker: str) -> None:
    """In a worker: end the process right after the task staging `marker`'s file wrote a batch."""
    from pipeline.ingest_pool import PoolParts

    stage = PoolParts.stage

    def stage_then_die(self: PoolParts, pairs: Any) -> None:
        stage(self, pairs)
        if self.token.endswith(marker):
            os._exit(1)

    PoolParts.stage = stage_then_die  # type: ignore[method-assign]


def test_a_worker_killed_while_staging_commits_nothing_and_a_rerun_completes(
    prefect_api: str, dask_address: str, reference: dict[str, Any], tmp_path: Path
) -> None:
    from distributed import Client
    from distributed.scheduler import KilledWorker

    cfg = config(tmp_path / "ws")
    ws = Workspace(cfg.workspace)
    with Client(dask_address) as client:
        client.run(_die_while_staging, KILLED_FILE)
        with pytest.raises(KilledWorker):
            ingest_flow(cfg, runner="dask", runner_address=dask_address)
        assert not any(ws.has_table(t) for t in TABLES)  # the first source failed: nothing committed
        assert ws.verify() == [] and not ws.listdir("_ingest")
        client.restart(wait_for_workers=True)  # both workers afresh: neither holds the fault now
        ingest_flow(cfg, runner="dask", runner_address=dask_address)
    assert part_hashes(ws) == reference["hashes"]


def test_one_big_file_is_staged_by_a_task_per_byte_range_with_the_rows_of_one_read(
    prefect_api: str, dask_address: str, tmp_path: Path
) -> None:
    # One JSONL file of about 630 KB cut into ranges of about 100 KB: a task each, on the workers.
    source = {"path": str(DATA / "ultrafeedback" / "eval_clean.jsonl"), "format": "prompt-chosen-rejected",
              "name": "ultrafeedback", "license": "MIT", "label_source": "ai"}
    split = SynprefConfig(workspace=str(tmp_path / "split"), sources=[{**source, "split_bytes": 100_000}])
    result = ingest_flow(split, runner="dask", runner_address=dask_address)
    assert result[0]["tasks"] >= 6 and os.getpid() not in result[0]["pids"]
    # The same bytes as the one-process ingest, which reads the same ranges in order.
    in_process = SynprefConfig(workspace=str(tmp_path / "one"), sources=split.sources)
    ingest_source(Workspace(in_process.workspace), in_process.sources[0])
    assert part_hashes(Workspace(split.workspace)) == part_hashes(Workspace(in_process.workspace))
    # The same pairs, numbers and source ids as reading the file whole.
    whole = SynprefConfig(workspace=str(tmp_path / "whole"), sources=[source])
    ingest_source(Workspace(whole.workspace), whole.sources[0])

    def pool(cfg: SynprefConfig) -> list[dict[str, Any]]:
        return Workspace(cfg.workspace).read("pool").sort_by("ingest_seq").to_pylist()

    assert pool(split) == pool(whole) and len(pool(whole)) > 150
