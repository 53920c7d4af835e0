"""Export as a stage contract: the same files, byte for byte, whatever the partition size and bucket
count; shards of exactly shard_rows pairs in pair_id order; the loop's selection per bucket equal
to the whole one; nothing left behind by a failed export."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
import pytest

from flows.export import export_card, export_workspace, loop_selection
from flows.loop_state import add_labels, label_rows
from pipeline.clean import exact_dedup
from pipeline.export import dataset_card
from pipeline.export_stage import ExportStage, run_export, shard_slices
from pipeline.pool import active_pool
from pipeline.store import Workspace
from tests.test_stage import sample_workspace


def digests(ws: Workspace, out: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, sha256) of every file under `out`, and the sha256 of each `curated` part in order."""
    files = sorted((str(p.relative_to(out)), hashlib.sha256(p.read_bytes()).hexdigest())
                   for p in out.rglob("*") if p.is_file())
    return files, [s["sha256"] for s in ws.manifest("curated")["shards"]]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = sample_workspace(tmp_path_factory.mktemp("sample"))
    exact_dedup(ws)
    return ws


def test_export_files_do_not_depend_on_partitions_or_buckets(sample: Workspace, tmp_path: Path) -> None:
    seen = []
    for i, (rows_per_partition, buckets) in enumerate([(100_000, 0), (700, 0), (250, 3), (333, 17)]):
        out = tmp_path / f"out-{i}"
        done = run_export(sample, ExportStage("pool", shard_rows=300, buckets=buckets), dataset_card,
                          out_dir=str(out), rows_per_partition=rows_per_partition)
        seen.append(digests(sample, out))
        assert done.tasks > 2 if rows_per_partition < 1000 else True
    assert all(s == seen[0] for s in seen[1:])
    active = active_pool(sample).select("pair_id").collect()["pair_id"].sort().to_list()
    curated = pl.from_arrow(sample.read("curated"))
    assert isinstance(curated, pl.DataFrame)
    assert curated["pair_id"].to_list() == active  # every active pair once, in pair_id order
    sizes = [s["rows"] for s in sample.manifest("curated")["shards"]]
    assert sizes[:-1] == [300] * (len(sizes) - 1) and 0 < sizes[-1] <= 300
    names = [n for n, _ in seen[0][0] if n.startswith("data/")]
    assert names == [f"data/train-{i:05d}-of-{len(sizes):05d}.parquet" for i in range(len(sizes))]


def test_shard_slices_cut_buckets_in_order() -> None:
    assert shard_slices([(0, 3), (2, 5), (7, 1)], 4) == [[(0, 0, 3), (2, 0, 1)], [(2, 1, 4)], [(7, 0, 1)]]
    assert shard_slices([], 10) == [[]]


def test_loop_export_per_bucket_is_the_whole_selection(sample: Workspace, tmp_path: Path) -> None:
    ids = sorted(sample.keys("pool").to_pylist())
    add_labels(sample, "gold", label_rows(ids[:40], ["rejected", "chosen"] * 20, "human", 1))
    # silver repeats gold pairs: gold wins, in every bucket as in the whole selection
    add_labels(sample, "silver", label_rows(ids[30:90], ["chosen", "chosen", "rejected"] * 20, "judges", 1))
    sample.write_json("rounds/1/summary.json", {"round": 1, "counts": {}, "gold_accuracy": 0.5})
    expected = loop_selection(sample).sort("pair_id")
    runs = []
    for i, rows_per_partition in enumerate([100_000, 400]):
        result = export_workspace(sample, "curation", str(tmp_path / f"out-{i}"), shard_rows=25,
                                  rows_per_partition=rows_per_partition)
        runs.append(digests(sample, tmp_path / f"out-{i}"))
        curated = pl.from_arrow(sample.read("curated"))
        assert isinstance(curated, pl.DataFrame)
        assert curated.select("pair_id", "flipped").equals(expected.select("pair_id", "flipped"))
        assert result.rows == 90 and result.relabeled == int(expected["flipped"].sum())
        assert result.card == export_card(sample, "curation", result.counts, 90, result.relabeled)
    assert runs[0] == runs[1]


def test_failed_export_leaves_no_parts_scratch_or_staging(sample: Workspace, tmp_path: Path) -> None:
    before = sample.manifest("curated")
    files = set(sample.listdir("curated"))
    with pytest.raises(ValueError, match="1 pair_id"):
        run_export(sample, ExportStage("given", shard_rows=300), dataset_card, out_dir=str(tmp_path / "x"),
                   selection=pl.DataFrame({"pair_id": ["0" * 32]}), rows_per_partition=500)
    assert sample.manifest("curated") == before and set(sample.listdir("curated")) == files
    assert sample.listdir("_shuffle/export") == []
    assert list(tmp_path.iterdir()) == []
