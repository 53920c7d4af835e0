"""Retrieval over a pool with images runs as partition tasks: the tasks build the combined
text+image rows the pool lacks, and the search over them returns what one exact index over every
combined vector returns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.embed import read_vectors
from pipeline.embed_images import combined_table, retrieval_table
from pipeline.ingest import ingest_source
from pipeline.pool import active_pool
from pipeline.retrieve import VIEW, _in_one_index, retrieval_k, retrieve
from pipeline.sources import SourceSpec
from pipeline.store import Workspace
from schemas.config.embed import EmbedConfig, IndexConfig
from schemas.labels import LABELS_SCHEMA
from tests import flow_helpers
from tests.test_multimodal_clean import drawing, row

pytest.importorskip("sentence_transformers")
prefect_api = flow_helpers.prefect_api


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.test_multimodal_clip import tiny_clip

    return str(tiny_clip(tmp_path_factory.mktemp("clip")))


def image_pool(folder: Path) -> Workspace:
    """Twelve image pairs over six drawings and four text-only pairs, in two sources."""
    (folder / "img").mkdir(parents=True)
    for i in range(6):
        drawing(10 + i).save(folder / "img" / f"d{i}.png")
    shapes = ["circles", "squares", "colours", "shapes"]
    rows = [row(f"img/d{i % 6}.png", f"How many {shapes[i % 4]} are in this drawing?", chosen=f"{i + 2}.")
            for i in range(12)]
    (folder / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = [{"prompt": f"How many {s} fit in a box?", "chosen": "Many.", "rejected": "None."} for s in shapes]
    (folder / "text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text))
    ws = Workspace(folder / "ws")
    ingest_source(ws, SourceSpec(str(folder / "images.jsonl"), name="images"))
    ingest_source(ws, SourceSpec(str(folder / "text.jsonl"), name="text"))
    return ws


def test_the_tasks_build_the_combined_rows_and_find_what_one_exact_index_finds(
        tmp_path: Path, clip_path: str) -> None:
    cfg = EmbedConfig(backend="openvino", image_model=clip_path, image_weight=0.5)
    ws = image_pool(tmp_path / "a")
    ids = sorted(active_pool(ws).select("pair_id").collect()["pair_id"].to_list())
    assert len(ids) == 16
    queries = pl.DataFrame({"pair_id": ids[:3], "p": [0.1, 0.3, 0.45]})
    gold = ids[5]  # labeled: never retrieved
    ws.append("gold", pl.DataFrame({"pair_id": [gold], "verdict": ["chosen"], "origin": ["t"], "round": [1],
                                    "detail": [""]}), schema=LABELS_SCHEMA)
    table = combined_table(cfg, VIEW)
    found = {}
    for rows in (1_000, 5, 3):
        hits, stats = retrieve(ws, cfg, queries, exclude_tables=("gold",), rows_per_partition=rows)
        found[rows] = hits
        assert stats["combine_tasks"] == stats["tasks"] == -(-16 // rows)
        # the first run's tasks combined every active pair; later runs found them all
        assert stats["combined"] == (16 if rows == 1_000 else 0)
        assert gold not in hits["pair_id"].to_list() and (hits["pair_id"] != hits["query_pair_id"]).all()
    assert ws.row_count(table) == 16
    assert found[5].equals(found[1_000]) and found[3].equals(found[1_000])

    ks = {q: retrieval_k(p) for q, p in queries.iter_rows()}
    flat = _in_one_index(ws, cfg, ks, list(ks), {gold}, IndexConfig(kind="flat"))
    assert flat["pair_id"].to_list() == found[1_000]["pair_id"].to_list()
    assert flat["query_pair_id"].to_list() == found[1_000]["query_pair_id"].to_list()
    assert np.allclose(flat["similarity"].to_numpy(), found[1_000]["similarity"].to_numpy(), atol=1e-5)

    # the rows the tasks wrote are the rows the one-process path writes for the same pool
    other = image_pool(tmp_path / "b")
    retrieve(other, cfg, pl.DataFrame({"pair_id": ids[:1], "p": [0.1]}), rows_per_partition=1_000)
    other_table = retrieval_table(other, cfg.model_copy(update={"image_model": clip_path}), VIEW, ids)
    assert other_table == table
    mine, theirs = read_vectors(ws, table), read_vectors(other, table)
    order = np.argsort(mine[0]), np.argsort(theirs[0])
    assert sorted(mine[0]) == sorted(theirs[0]) == ids
    assert np.allclose(mine[1][order[0]], theirs[1][order[1]], atol=1e-6)
    assert mine[1].shape == (16, 384 + 16)
    assert np.allclose(np.linalg.norm(mine[1], axis=1), 1, atol=1e-5)


def test_on_dask_workers_the_tasks_combine_and_find_what_this_process_does(
        tmp_path: Path, clip_path: str, prefect_api: str, dask_address: str) -> None:
    import os
    from typing import Any

    from prefect import flow

    from flows.partition_tasks import retrieve_partition_task, run_partitions
    from flows.runners import make_task_runner

    cfg = EmbedConfig(backend="openvino", image_model=clip_path, image_weight=0.5)
    local_ws, dask_ws = image_pool(tmp_path / "local"), image_pool(tmp_path / "dask")
    ids = sorted(active_pool(local_ws).select("pair_id").collect()["pair_id"].to_list())
    queries = pl.DataFrame({"pair_id": ids[:4], "p": [0.1, 0.3, 0.45, 0.2]})
    local, _ = retrieve(local_ws, cfg, queries, rows_per_partition=1_000)

    @flow(task_runner=make_task_runner("dask", address=dask_address))
    def retrieve_on_dask() -> tuple[pl.DataFrame, dict[str, Any]]:
        def on_dask(stage: Any, partitions: list[Any], merge: Any) -> None:
            run_partitions(dask_ws, retrieve_partition_task, stage, partitions, max_parallel=2,
                           on_window=merge)

        return retrieve(dask_ws, cfg, queries, rows_per_partition=4, run_map=on_dask)

    found, stats = retrieve_on_dask()
    # CLIP on a one-thread worker sums in another order than here: the same hits, similarities
    # equal to float32 rounding
    assert found.height > 4 and found.drop("similarity").equals(local.drop("similarity"))
    assert np.allclose(found["similarity"].to_numpy(), local["similarity"].to_numpy(), atol=1e-6)
    assert stats["combine_tasks"] == stats["tasks"] == 4 and stats["combined"] == 16
    assert stats["worker_pids"] and os.getpid() not in stats["worker_pids"]
    table = combined_table(cfg, VIEW)
    mine, theirs = read_vectors(local_ws, table), read_vectors(dask_ws, table)
    assert sorted(mine[0]) == sorted(theirs[0]) == ids
    assert np.allclose(mine[1][np.argsort(mine[0])], theirs[1][np.argsort(theirs[0])], atol=1e-6)
