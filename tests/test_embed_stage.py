"""Embedding as a sharded stage: the table it commits is the one the single-process embed wrote
(same keys, same row order, the same vectors), whatever the partition size or the runner."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect import flow

from flows.progress import ProgressEvent, listening, within
from flows.runners import make_task_runner
from flows.stages import embed_flow, embed_partition_task, run_embed
from pipeline.embed import (
    Encoder,
    _latest_attributes,
    embed_pairs,
    embeddings_schema,
    embeddings_table,
    existing_keys,
    pair_text,
    read_vectors,
    text_hash,
    vector_table,
)
from pipeline.embed_stage import EmbedStage
from pipeline.pool import dropped_ids
from pipeline.stage import plan_partitions
from pipeline.store import Workspace
from schemas.attributes import ATTRIBUTES_SCHEMA
from schemas.config.embed import EmbedConfig
from schemas.pair import DROPPED_SCHEMA
from tests import flow_helpers
from tests.embed_pool import hh_records, ultrafeedback_records, write_pool

FAST = EmbedConfig(backend="openvino")
VIEWS = ("conversation", "conversation+attributes")
prefect_api = flow_helpers.prefect_api


@pytest.fixture(scope="module")
def pool_root(shared_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 real pairs in two pool parts, two of them dropped, five with attributes."""
    root = tmp_path_factory.mktemp("embed-stage-pool")
    ws = Workspace(root)
    records = ultrafeedback_records(shared_raw, 14) + hh_records(shared_raw, 6, first_seq=14)
    write_pool(ws, records[:11])
    write_pool(ws, records[11:])
    ws.append("dropped", pa.Table.from_pylist(
        [{"pair_id": records[i].pair_id, "stage": "semantic_dedup", "reason": "near-duplicate",
          "kept_pair_id": "", "similarity": None, "detail": "{}"} for i in (3, 12)], schema=DROPPED_SCHEMA))
    ws.append("attributes", pa.Table.from_pylist(
        [{"pair_id": records[i].pair_id, "task_category": "code", "objectivity": "objective",
          "controversiality": "low", "desired_attributes": ["correct"], "guideline": f"guideline {i}",
          "model": "heuristic"} for i in (0, 4, 9, 13, 17)], schema=ATTRIBUTES_SCHEMA))
    return root


def copy_of(root: Path, tmp_path: Path, name: str) -> Workspace:
    shutil.copytree(root, tmp_path / name)
    return Workspace(tmp_path / name)


def embed_unsharded(ws: Workspace, cfg: EmbedConfig, view: str) -> None:
    """What embed_pairs wrote before it became a stage: every missing text of the active pool
    listed in one process, in pool order, encoded and appended in chunks of 8192."""
    table = embeddings_table(cfg.model, view)
    gone = set(dropped_ids(ws)["pair_id"].to_list())
    rows = [r for r in ws.read("pool", columns=["pair_id", "conversation", "chosen", "rejected"]).to_pylist()
            if r["pair_id"] not in gone]
    attributes = _latest_attributes(ws, {r["pair_id"] for r in rows}) if view != "conversation" else {}
    done = existing_keys(ws, table)
    encoder = Encoder(cfg)
    pending = []
    for row in rows:
        if view == "conversation" and row["pair_id"] in {pid for pid, _ in done}:
            continue
        text = pair_text(row, encoder.char_budget, attributes.get(row["pair_id"]))
        if (row["pair_id"], text_hash(text)) not in done:
            pending.append((row["pair_id"], text_hash(text), text))
    for start in range(0, len(pending), 8192):
        chunk = pending[start : start + 8192]
        vectors = encoder.encode([p[2] for p in chunk])
        ws.append(table, vector_table(chunk, vectors, embeddings_schema(encoder.dim, cfg.model, view)),
                  unique_key=["pair_id", "text_hash"])


def table_of(ws: Workspace, view: str) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The embeddings table's keys in row order and its vectors."""
    rows = ws.read(embeddings_table(FAST.model, view))
    keys = list(zip(rows.column("pair_id").to_pylist(), rows.column("text_hash").to_pylist(), strict=True))
    return keys, np.asarray(rows.column("vector").to_pylist(), dtype=np.float32)


@pytest.fixture(scope="module")
def before(pool_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ws = copy_of(pool_root, tmp_path_factory.mktemp("before"), "ws")
    out: dict[str, Any] = {}
    for view in VIEWS:
        embed_unsharded(ws, FAST, view)
        out[view] = (table_of(ws, view), read_vectors(ws, embeddings_table(FAST.model, view)))
    return out


@pytest.mark.parametrize("rows_per_partition", [1000, 7])
def test_the_stage_writes_the_table_the_unsharded_embed_wrote(
    pool_root: Path, before: dict[str, Any], tmp_path: Path, rows_per_partition: int
) -> None:
    ws = copy_of(pool_root, tmp_path, "ws")
    assert len(plan_partitions(ws, rows_per_partition)) == (1 if rows_per_partition == 1000 else 3)
    for view in VIEWS:
        stats = embed_pairs(ws, FAST, view, rows_per_partition=rows_per_partition)
        assert (stats.requested, stats.embedded, stats.cached) == (18, 18, 0)
        keys, vectors = table_of(ws, view)
        ids, searched = read_vectors(ws, embeddings_table(FAST.model, view))
        (want_keys, want_vectors), (want_ids, want_searched) = before[view]
        assert keys == want_keys and ids == want_ids and len(keys) == 18  # same keys, same row order
        if rows_per_partition == 1000:  # the same batches as before: the same bytes
            assert np.array_equal(vectors, want_vectors) and np.array_equal(searched, want_searched)
        else:  # other batches pad differently: the same vectors up to float noise
            np.testing.assert_allclose(vectors, want_vectors, atol=2e-3)
            assert float(np.min(np.sum(vectors * want_vectors, axis=1))) > 0.9999
    assert ws.verify() == []


def test_a_rerun_embeds_nothing_and_commits_nothing(pool_root: Path, tmp_path: Path) -> None:
    ws = copy_of(pool_root, tmp_path, "ws")
    for view in VIEWS:
        embed_pairs(ws, FAST, view, rows_per_partition=7)
        manifest = ws.manifest(embeddings_table(FAST.model, view))
        again = embed_pairs(ws, FAST, view, rows_per_partition=7)
        assert (again.embedded, again.cached, again.backend) == (0, 18, "-")
        assert ws.manifest(embeddings_table(FAST.model, view))["shards"] == manifest["shards"]


def test_a_partition_task_writes_and_reports_only_its_own_rows(pool_root: Path, tmp_path: Path) -> None:
    ws = copy_of(pool_root, tmp_path, "ws")
    stage = EmbedStage(FAST, "conversation")
    partition = plan_partitions(ws, 7)[1]  # rows 7-13: the end of one pool part, the start of the next
    assert len(partition.ranges) == 2
    gone = set(dropped_ids(ws)["pair_id"].to_list())
    pool = ws.read("pool", columns=["pair_id"]).column(0).to_pylist()
    own = [pid for pid in pool[7:14] if pid not in gone]
    receipt = embed_partition_task.fn(ws.uri, stage, partition)
    assert (receipt["task"], receipt["examined"], receipt["embedded"]) == (1, 6, 6)
    assert receipt["pid"] == os.getpid()
    written = [pid for part in receipt["parts"]
               for pid in pq.read_table(ws.path(stage.table, part["file"])).column("pair_id").to_pylist()]
    assert written == own
    assert not ws.has_table(stage.table)  # parts only: the driver commits


@flow(task_runner=make_task_runner("local", workers=2))
def embed_on_threads(ws_uri: str) -> dict[str, Any]:
    return run_embed(Workspace(ws_uri), EmbedStage(FAST, "conversation+attributes"), 7)


def test_the_flow_step_reports_per_finished_partition(pool_root: Path, before: dict[str, Any],
                                                      tmp_path: Path) -> None:
    ws = copy_of(pool_root, tmp_path, "ws")
    events: list[ProgressEvent] = []

    @flow
    def step() -> dict[str, Any]:
        with within("stage1", None, "embed"):
            return embed_flow(ws.uri, FAST, "conversation", 7)

    with listening(events.append):
        result = step()
    assert (events[0].step, events[0].done, events[0].total) == ("embed/encoded", 0, 20)
    assert sorted(e.done for e in events)[-1] == 20 and len(events) == 4  # start + 3 partitions
    assert (result["embedded"], result["tasks"], result["pids"]) == (18, 3, [os.getpid()])
    assert table_of(ws, "conversation")[0] == before["conversation"][0][0]


@pytest.mark.slow
def test_on_dask_workers_the_vectors_are_the_local_ones(prefect_api: str, dask_address: str,
                                                        pool_root: Path, tmp_path: Path) -> None:
    local = copy_of(pool_root, tmp_path, "local")
    dask = copy_of(pool_root, tmp_path, "dask")
    on_threads = embed_on_threads(local.uri)

    @flow(task_runner=make_task_runner("dask", address=dask_address))
    def on_dask() -> dict[str, Any]:
        return run_embed(dask, EmbedStage(FAST, "conversation+attributes"), 7)

    result = on_dask()
    assert result["embedded"] == on_threads["embedded"] == 18 and result["tasks"] == 3
    assert result["pids"] and os.getpid() not in result["pids"]  # the workers' processes
    assert on_threads["pids"] == [os.getpid()]
    keys, vectors = table_of(dask, "conversation+attributes")
    want_keys, want_vectors = table_of(local, "conversation+attributes")
    assert keys == want_keys and np.array_equal(vectors, want_vectors)
    assert dask.verify() == []
