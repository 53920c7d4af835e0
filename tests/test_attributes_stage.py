"""Attributes as a partition-map stage: heuristic rows exactly as `generate_attributes` writes
them, whatever the partition size; tasks write only their own parts; one commit per table."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.attributes import AttributeStats, generate_attributes, read_attributes
from pipeline.attributes_stage import AttributesStage, run_attributes
from pipeline.pool import dropped_ids
from pipeline.stage import plan_partitions
from pipeline.store import Workspace
from schemas.config.judges import AttributesConfig
from schemas.pair import DROPPED_SCHEMA
from tests.embed_pool import hh_records, ultrafeedback_records, write_pool
from tests.fixtures.judge_pairs import workspace_with_pairs
from tests.fixtures.vllm_server import TinyJudgeEngine

HEURISTIC = AttributesConfig(kind="heuristic", batch_size=16)


@pytest.fixture(scope="module")
def pool_root(shared_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 real pairs in two pool parts, five of them dropped, ten with attributes already."""
    root = tmp_path_factory.mktemp("attributes-stage") / "ws"
    ws = Workspace(root)
    records = ultrafeedback_records(shared_raw, 40) + hh_records(shared_raw, 110, first_seq=40)
    write_pool(ws, records[:70])
    write_pool(ws, records[70:])
    ws.append("dropped", pa.Table.from_pylist(
        [{"pair_id": records[i].pair_id, "stage": "exact-dedup", "reason": "duplicate", "kept_pair_id": "",
          "similarity": None, "detail": "{}"} for i in (3, 40, 69, 70, 120)], schema=DROPPED_SCHEMA))
    generate_attributes(ws, HEURISTIC, [r.pair_id for r in records[100:110]])
    return root


def copy_of(root: Path, dest: Path) -> Workspace:
    shutil.copytree(root, dest)
    return Workspace(dest)


def test_heuristic_rows_are_the_ones_generate_attributes_writes(pool_root: Path, tmp_path: Path) -> None:
    before = copy_of(pool_root, tmp_path / "before")
    want = generate_attributes(before, HEURISTIC)
    tables = []
    for rows_per_partition in (1000, 37):
        ws = copy_of(pool_root, tmp_path / str(rows_per_partition))
        got = run_attributes(ws, AttributesStage(HEURISTIC), rows_per_partition=rows_per_partition)
        assert (got.pairs, got.generated, got.skipped, got.quarantined) == \
            (want.pairs, want.generated, want.skipped, 0) == (145, 135, 10, 0)
        assert read_attributes(ws).sort("pair_id").equals(read_attributes(before).sort("pair_id"))
        assert ws.verify() == [] and not ws.has_table("quarantine")
        tables.append(read_attributes(ws))
    assert tables[0].equals(tables[1])  # the same rows in the same (pool) order
    assert len(plan_partitions(Workspace(tmp_path / "37"), 37)) == 5


def test_a_rerun_generates_nothing_and_commits_nothing(pool_root: Path, tmp_path: Path) -> None:
    ws = copy_of(pool_root, tmp_path / "ws")
    run_attributes(ws, AttributesStage(HEURISTIC), rows_per_partition=50)
    manifest = ws.manifest("attributes")
    again = run_attributes(ws, AttributesStage(HEURISTIC), rows_per_partition=50)
    assert isinstance(again, AttributeStats) and (again.generated, again.skipped) == (0, 145)
    assert ws.manifest("attributes")["shards"] == manifest["shards"]


def test_a_partition_task_writes_only_its_own_missing_rows(pool_root: Path, tmp_path: Path) -> None:
    ws = copy_of(pool_root, tmp_path / "ws")
    partition = plan_partitions(ws, 50)[1]  # rows 50-99: the end of one pool part, the start of the next
    assert len(partition.ranges) == 2
    gone = set(dropped_ids(ws)["pair_id"].to_list())
    have = set(read_attributes(ws)["pair_id"].to_list())
    pool = ws.read("pool", columns=["pair_id"]).column(0).to_pylist()
    own = [p for p in pool[50:100] if p not in gone and p not in have]
    receipt = AttributesStage(HEURISTIC).run(ws, partition)
    assert (receipt["task"], receipt["pairs"], receipt["rows"]) == (1, 48, len(own))
    assert receipt["pid"] == os.getpid() and receipt["quarantine"] == []
    written = pq.read_table(ws.path("attributes", receipt["parts"][0]["file"])).column("pair_id").to_pylist()
    assert written == own
    assert ws.manifest("attributes")["shards"] == Workspace(pool_root).manifest("attributes")["shards"]


def test_an_unknown_kind_fails_before_any_task_runs() -> None:
    with pytest.raises(ValueError, match="needs `model`"):
        AttributesStage(AttributesConfig(kind="vllm"))


@pytest.mark.vllm
def test_llm_output_that_never_validates_is_quarantined_once_from_partition_tasks(
        tiny_judge_engine: TinyJudgeEngine, tmp_path: Path) -> None:
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    settings = tiny_judge_engine.settings
    # Eight tokens cannot hold the JSON object: every attempt is cut off, so every pair is quarantined.
    cut = AttributesConfig(kind="vllm", model=tiny_judge_engine.model, max_tokens=8, retries=1,
                           max_model_len=settings["max_model_len"],
                           gpu_memory_utilization=settings["gpu_memory_utilization"],
                           enforce_eager=settings["enforce_eager"])
    stats = run_attributes(ws, AttributesStage(cut), rows_per_partition=2)
    assert (stats.tasks, stats.generated, stats.retried, stats.quarantined) == (3, 0, len(ids), len(ids))
    assert len(ws.manifest("quarantine")["shards"]) == 3  # one part per task, landed in one commit
    quarantine = ws.read("quarantine").to_pylist()
    assert {json.loads(r["raw"])["pair_id"] for r in quarantine} == set(ids)
    assert all("invalid after retries" in r["reason"] for r in quarantine)
    again = run_attributes(ws, AttributesStage(cut), rows_per_partition=4)
    assert again.quarantined == len(ids) and ws.row_count("quarantine") == len(ids)  # not written twice
    assert not ws.has_table("attributes")
