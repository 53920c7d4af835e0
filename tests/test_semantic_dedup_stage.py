"""Semantic dedup as a sharded stage: the drops of the one-process semantic dedup, whatever the
partition size or the cell count, planted copies found across group boundaries, one commit."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.semantic_dedup import cell_count, semantic_dedup
from pipeline.semantic_dedup_cells import EDGE_SCHEMA, _shares, assign_cells, resolve, train_cells
from pipeline.semantic_dedup_stage import SemanticDedupStage, run_semantic_dedup
from pipeline.stage import plan_partitions
from pipeline.store import Workspace
from schemas.config.embed import SemanticDedupConfig
from schemas.pair import DROPPED_SCHEMA
from tests.dedup_vectors import FAST, PlantedPool, planted_pool
from tests.test_semantic_dedup import dedup_pool

__all__ = ["dedup_pool"]  # the real-embedding pool of tests/test_semantic_dedup.py, shared here


def drops_of(ws: Workspace) -> pl.DataFrame:
    frame = pl.from_arrow(ws.read("dropped", schema=DROPPED_SCHEMA))
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("pair_id")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PlantedPool]:
    root = tmp_path_factory.mktemp("planted") / "ws"
    return root, planted_pool(Workspace(root))


def copy_of(root: Path, dest: Path) -> Workspace:
    shutil.copytree(root, dest)
    return Workspace(dest)


def test_the_stage_drops_exactly_what_semantic_dedup_drops(
    dedup_pool: tuple[Path, list, list], tmp_path: Path
) -> None:
    one = copy_of(dedup_pool[0], tmp_path / "one")
    semantic_dedup(one, FAST, SemanticDedupConfig(threshold=0.95))
    for cell_rows, rows_per_partition in [(100_000, 100_000), (4, 5)]:
        ws = copy_of(dedup_pool[0], tmp_path / f"stage-{cell_rows}")
        result = run_semantic_dedup(ws, SemanticDedupStage(FAST, SemanticDedupConfig(threshold=0.95),
                                                           cell_rows=cell_rows),
                                    rows_per_partition=rows_per_partition)
        assert (result["considered"], result["dropped"], result["groups"]) == (19, 3, 3)
        assert drops_of(ws).equals(drops_of(one))  # pair, kept pair, similarity and detail alike
        assert result["cells"] == (1 if cell_rows == 100_000 else 10)
        assert ws.verify() == [] and not ws.listdir("_shuffle/semantic-dedup")


def test_drops_do_not_depend_on_partition_size(planted: tuple[Path, PlantedPool], tmp_path: Path) -> None:
    root, pool = planted
    runs = {}
    for rows_per_partition in (1000, 37):
        ws = copy_of(root, tmp_path / str(rows_per_partition))
        result = run_semantic_dedup(ws, SemanticDedupStage(FAST, cell_rows=100),
                                    rows_per_partition=rows_per_partition)
        runs[rows_per_partition] = (ws, result)
    (big, one), (small, many) = runs[1000], runs[37]
    assert one["tasks_by_phase"]["map"] == 1
    assert many["tasks_by_phase"]["map"] == len(plan_partitions(small, 37)) == 18
    assert one["cells"] == many["cells"] == 13 and many["tasks_by_phase"]["reduce"] >= 2
    assert drops_of(small).equals(drops_of(big))
    assert [s["sha256"] for s in small.manifest("dropped")["shards"]] == \
        [s["sha256"] for s in big.manifest("dropped")["shards"]]
    # every planted copy, matched to its original, and nothing else
    assert dict(zip(drops_of(big)["pair_id"], drops_of(big)["kept_pair_id"], strict=True)) == pool.copies


def test_planted_copies_across_a_group_boundary_are_found(planted: tuple[Path, PlantedPool],
                                                          tmp_path: Path) -> None:
    root, pool = planted
    ws = copy_of(root, tmp_path / "ws")
    stage = SemanticDedupStage(FAST, cell_rows=50).planned(ws)
    for partition in plan_partitions(ws):
        stage.run_sample(ws, partition)
    stage.run_train(ws)
    index = {pid: i for i, pid in enumerate(pool.ids)}
    rows = [index[p] for pair in pool.boundary for p in pair]
    centroids = stage._centroids(ws)
    nearest = assign_cells(pool.vectors[rows], centroids, 1)[:, 0]
    homes = stage.group_of(nearest, len(centroids)).reshape(-1, 2)
    split = [pair for pair, (a, b) in zip(pool.boundary, homes, strict=True) if a != b]
    assert split  # some planted pairs have their nearest cells in two groups (two reduce tasks)
    stage.cleanup(ws)
    run_semantic_dedup(ws, SemanticDedupStage(FAST, cell_rows=50))
    found = dict(zip(drops_of(ws)["pair_id"], drops_of(ws)["kept_pair_id"], strict=True))
    assert all(found.get(copy) == original for original, copy in split)


def test_groups_beyond_exact_max_search_the_cells_of_the_one_process_search(
    planted: tuple[Path, PlantedPool], tmp_path: Path
) -> None:
    # groups of more than `exact_max` rows run the one-process cell search on their cells: each
    # vector against the members of its nearest cells, as many cells as that search makes for
    # the whole pool (not a few coarse cells with a cell search nested inside each)
    root, pool = planted
    config = SemanticDedupConfig(exact_max=60)
    one = copy_of(root, tmp_path / "one")
    assert "16 k-means cells, 2 probed" in semantic_dedup(one, FAST, config).search
    for cell_rows in (100, 1000):
        ws = copy_of(root, tmp_path / str(cell_rows))
        result = run_semantic_dedup(ws, SemanticDedupStage(FAST, config, cell_rows=cell_rows),
                                    rows_per_partition=100)
        assert result["fine_cells"] == cell_count(len(pool.ids), 2) == 16
        assert result["cells"] == (13 if cell_rows == 100 else 2)
        assert " of 16 k-means cells, 2 probed" in result["search"]
        assert drops_of(ws).equals(drops_of(one))
        assert dict(zip(drops_of(ws)["pair_id"], drops_of(ws)["kept_pair_id"], strict=True)) == pool.copies


def test_a_rerun_drops_nothing_new(planted: tuple[Path, PlantedPool], tmp_path: Path) -> None:
    ws = copy_of(planted[0], tmp_path / "ws")
    first = run_semantic_dedup(ws, SemanticDedupStage(FAST, cell_rows=100), rows_per_partition=200)
    manifest = ws.manifest("dropped")
    again = run_semantic_dedup(ws, SemanticDedupStage(FAST, cell_rows=100), rows_per_partition=200)
    assert first["dropped"] == len(planted[1].copies) and again["dropped"] == 0
    assert again["considered"] == first["considered"] - first["dropped"]
    assert ws.manifest("dropped")["shards"] == manifest["shards"]


def test_a_chain_across_cells_is_resolved_by_global_rank() -> None:
    # a (best) ~ b in one cell, b ~ c in another, a and c apart: b goes for a, so c (near only
    # b, which is dropped) stays, whichever cell's edges come first
    edges = [("b", "a", 1, 0, 0.97), ("c", "b", 2, 1, 0.99)]
    for order in (edges, edges[::-1]):
        frame = pl.DataFrame(order, schema=EDGE_SCHEMA, orient="row")
        assert resolve(frame).select("pair_id", "kept_pair_id").rows() == [("b", "a")]


def test_cells_do_not_depend_on_the_block_they_were_scored_in() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    centroids = rng.standard_normal((9, 16)).astype(np.float32)
    whole = assign_cells(vectors, centroids, 3)
    assert np.array_equal(whole, assign_cells(vectors, centroids, 3, block=7))
    exact = vectors.astype(np.float64) @ centroids.T.astype(np.float64)
    assert np.array_equal(whole[:, 0], exact.argmax(axis=1))


def test_two_level_cells_find_what_one_k_means_finds(planted: tuple[Path, PlantedPool],
                                                     tmp_path: Path) -> None:
    # past `flat_cells` cells the k-means runs in two levels; the cell search over those cells
    # still finds every planted copy, matched to its original, and drops nothing else
    root, pool = planted
    config = SemanticDedupConfig(exact_max=60)
    runs = {}
    for flat in (256, 4):
        ws = copy_of(root, tmp_path / str(flat))
        runs[flat] = run_semantic_dedup(ws, SemanticDedupStage(FAST, config, cell_rows=100, flat_cells=flat),
                                        rows_per_partition=100)
        assert dict(zip(drops_of(ws)["pair_id"], drops_of(ws)["kept_pair_id"], strict=True)) == pool.copies
    assert runs[256]["coarse_cells"] == 0 and "two levels" not in runs[256]["search"]
    assert runs[4]["fine_cells"] == 16 and runs[4]["coarse_cells"] == 4
    assert "16 k-means cells (two levels, 4 coarse)" in runs[4]["search"]


def test_two_level_k_means_is_deterministic_and_close_to_one_k_means() -> None:
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((60, 32))
    points = centres[rng.integers(0, 60, 9000)] + 0.4 * rng.standard_normal((9000, 32))
    vectors = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    two = train_cells(vectors, 300, 10, flat=256)
    assert two.shape == (300, 32) and np.array_equal(two, train_cells(vectors, 300, 10, flat=256))
    assert np.allclose(np.linalg.norm(two, axis=1), 1.0, atol=1e-4)
    one = train_cells(vectors, 300, 10, flat=300)

    def fit(centroids: np.ndarray) -> float:  # mean cosine of a vector to its nearest centroid
        return float((vectors @ centroids.T).max(axis=1).mean())

    assert fit(two) > fit(one) - 0.01, (fit(two), fit(one))


def test_cells_are_shared_in_proportion_without_exceeding_a_group() -> None:
    shares = _shares(10, np.array([50, 30, 20, 0, 1]))
    assert shares.tolist() == [5, 3, 2, 0, 0]
    assert _shares(7, np.array([1, 1, 100])).tolist() == [0, 0, 7]
    assert _shares(9, np.array([2, 2, 3])).tolist() == [2, 2, 3]  # no more cells than vectors
