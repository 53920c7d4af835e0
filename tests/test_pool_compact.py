"""`synpref compact`: the parts of small ingests rewritten as clustered parts (pipeline/pool_compact.py),
every row and number kept, the key index kept, a lost race leaving nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flows.cli.main import app
from pipeline import ingest_parts
from pipeline.ingest import ingest_source
from pipeline.ingest_parts import KEY_RANGE
from pipeline.key_index import POOL_KEYS
from pipeline.pool import clustered_share, load_records, parts_holding
from pipeline.pool_compact import compact_pool, loose_parts
from pipeline.sources import SourceSpec
from pipeline.store import Workspace
from tests.test_key_index import CountingMemoryFS, counting_workspace, opened_parts, write_pairs


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clustered parts of about 500 rows, row groups of 64; ingests here stay below clustering."""
    monkeypatch.setattr(ingest_parts, "CLUSTER_ROWS", 10**9)
    monkeypatch.setattr(ingest_parts, "PART_ROWS", 500)
    monkeypatch.setattr(ingest_parts, "GROUP_ROWS", 64)


def pool_by_seq(ws: Workspace) -> pl.DataFrame:
    frame = pl.from_arrow(ws.read("pool"))
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("ingest_seq")


def three_rounds(ws: Workspace, folder: Path) -> None:
    for r in range(3):  # a source per round, 700 new pairs each
        ingest_source(ws, SourceSpec(str(write_pairs(folder / f"r{r}.jsonl", range(700 * r, 700 * (r + 1)))),
                                     name=f"r{r}"))


def test_compaction_clusters_small_ingests_keeping_every_row_and_the_key_index(
        tmp_path: Path, small_parts: None) -> None:
    ws = counting_workspace()
    three_rounds(ws, tmp_path)
    before = pool_by_seq(ws)
    assert len(loose_parts(ws)) == 3 and clustered_share(ws) == 0.0
    index = POOL_KEYS.state(ws)
    stats = compact_pool(ws)
    assert (stats.loose_parts, stats.rows, stats.parts_written, stats.committed, stats.index_kept) == (
        3, 2_100, 5, True, True)
    shards = ws.manifest("pool")["shards"]
    assert len(shards) == 5 and clustered_share(ws) == 1.0 and not loose_parts(ws)
    assert pool_by_seq(ws).equals(before)  # every row, column and ingest_seq
    for shard in shards:
        ids = pq.read_table(ws.path("pool", shard["file"]), columns=["pair_id"], filesystem=ws.fs).column(0)
        assert ids.to_pylist() == sorted(ids.to_pylist())
        assert shard[KEY_RANGE] == [ids[0].as_py(), ids[-1].as_py()]
    assert ws.verify() == [] and not ws.listdir("_compact")  # old parts and scratch gone
    # the index covers the new parts with its old key files: a repeat is still told apart
    after = POOL_KEYS.state(ws)
    assert set(after.covers) == {s["file"] for s in shards} and after.files == index.files
    again = ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / "more.jsonl", range(2_000, 2_300))),
                                         name="r2"))
    assert (again.added, again.already_present + again.duplicates) == (200, 100)
    # a 300-id shard of sorted ids opens only the parts of its own slice
    ids = sorted(before["pair_id"].to_list())[600:900]
    CountingMemoryFS.opened = []
    assert [r.pair_id for r in load_records(ws, ids)] == ids
    shards = ws.manifest("pool")["shards"]
    opened = {p.rsplit("/", 1)[1] for p in opened_parts(ws, "pool", CountingMemoryFS.opened, shards)}
    holding = {s["file"] for s in parts_holding(shards, ids)}
    assert opened == holding and len(holding) <= 3 < len(shards)  # its ranges' parts + the new loose one
    assert compact_pool(ws).reason.startswith("200 loose rows make fewer than two ranges")


def test_a_compaction_that_loses_the_race_replaces_nothing_and_leaves_nothing(
        tmp_path: Path, small_parts: None) -> None:
    ws = Workspace(tmp_path / "ws")
    three_rounds(ws, tmp_path)
    before = pool_by_seq(ws)
    from pipeline.ingest_parts import in_threads

    def run_then_compete(jobs: list) -> list:  # type: ignore[type-arg]
        done = in_threads(ws, jobs)
        if jobs and not hasattr(jobs[0], "file"):  # after the second wave: another compaction wins
            assert compact_pool(ws).committed
        return done

    lost = compact_pool(ws, run=run_then_compete)
    assert not lost.committed and "another writer" in lost.reason
    assert pool_by_seq(ws).equals(before) and clustered_share(ws) == 1.0
    assert ws.verify() == [] and not ws.listdir("_compact")  # the loser's parts deleted


def test_compact_command_reports_and_takes_the_lease(tmp_path: Path, small_parts: None) -> None:
    ws = Workspace(tmp_path / "ws")
    three_rounds(ws, tmp_path)
    result = CliRunner().invoke(app, ["compact", "-w", str(tmp_path / "ws")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "2100" in result.output and clustered_share(ws) == 1.0
    from pipeline.lease import read_holder

    assert read_holder(ws) is None  # released when the command returned
    empty = CliRunner().invoke(app, ["compact", "-w", str(tmp_path / "none")])
    assert empty.exit_code == 1 and "has no pool yet" in empty.output


def test_cleaning_and_export_of_a_compacted_pool_give_the_bytes_of_the_pool_before(
        tmp_path: Path, small_parts: None) -> None:
    """The bundled hh-rlhf and UltraFeedback sources (repeats across sources, near-duplicates):
    compaction changes where rows live, not what exact dedup, decontamination or export decide."""
    import hashlib

    from pipeline.clean import decontaminate, exact_dedup
    from pipeline.export import export_curated

    data = Path(__file__).resolve().parents[1] / "examples" / "data"
    variants = tmp_path / "variants.jsonl"  # case and spacing variants of 300 pairs: exact dedup drops them
    variants.write_text("".join(json.dumps({"prompt": f"question  {i}?", "chosen": f"ANSWER {i}.",
                                            "rejected": "no."}) + "\n" for i in range(300)))
    sources = [SourceSpec(str(data / "hh-rlhf"), format="hh-rlhf", name="hh-rlhf"),
               SourceSpec(str(data / "ultrafeedback" / "eval_clean.jsonl"), name="ultrafeedback"),
               SourceSpec(str(write_pairs(tmp_path / "pairs.jsonl", range(600))), name="pairs"),
               SourceSpec(str(variants), name="variants")]
    bench = str(data / "ultrafeedback" / "eval_clean.jsonl")  # decontaminates every pair it shares
    exported: dict[str, list[str]] = {}
    dropped: dict[str, pl.DataFrame] = {}
    for layout in ("plain", "compacted"):
        ws = Workspace(tmp_path / layout)
        for source in sources:
            ingest_source(ws, source)
        if layout == "compacted":
            assert compact_pool(ws).parts_written > 2
        assert exact_dedup(ws).dropped > 0 and decontaminate(ws, [bench]).dropped > 0
        frame = pl.from_arrow(ws.read("dropped", columns=["pair_id", "stage", "reason", "kept_pair_id"]))
        assert isinstance(frame, pl.DataFrame)
        dropped[layout] = frame.sort("pair_id", "stage")
        out = tmp_path / f"{layout}-out"
        export_curated(ws, None, str(out), shard_rows=1_000)
        exported[layout] = [hashlib.sha256(p.read_bytes()).hexdigest()
                            for p in sorted((out / "data").iterdir())]
    assert dropped["compacted"].equals(dropped["plain"])
    assert exported["compacted"] == exported["plain"] and len(exported["plain"]) >= 3


def test_side_parts_of_compacted_rows_meet_only_the_partitions_that_hold_the_new_parts(
        tmp_path: Path, small_parts: None) -> None:
    """Parts of a side table tagged with the loose parts' rows used to be read by every task once the
    pool was compacted; the compaction's record sends them to the partitions of its new parts."""
    import pyarrow as pa

    from pipeline.covers import MOVED, parts_meeting, tagged
    from pipeline.parts import commit_keyed_parts, write_part
    from pipeline.stage import plan_partitions, read_partition

    side = pa.schema([("pair_id", pa.string()), ("value", pa.int64())])
    ws = Workspace(tmp_path / "ws")
    three_rounds(ws, tmp_path)
    parts = []
    for p in plan_partitions(ws, 700):  # a side part per loose part, tagged with its rows
        ids = pl.concat(list(read_partition(ws, p, ["pair_id"])))["pair_id"]
        parts.append(tagged(write_part(ws, "side", pa.table({"pair_id": ids, "value": [p.index] * len(ids)}),
                                       side), p))
    commit_keyed_parts(ws, "side", parts, side, "pair_id")
    assert compact_pool(ws).committed
    ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / "r3.jsonl", range(5_000, 5_300))), name="r3"))
    new = {s["file"] for s in ws.manifest("pool")["shards"] if KEY_RANGE in s}
    assert len(new) == 5 and len(loose_parts(ws)) == 1

    def met(rows: int) -> dict[int, int]:
        return {p.index: len(parts_meeting(ws, "side", p)) for p in plan_partitions(ws, rows)}

    assert met(2_100) == {0: 3, 1: 0}  # the compacted rows; the later loose part
    for rows in (2_100, 400, 1_000):  # a partition finds its side rows in the parts it meets
        for p in plan_partitions(ws, rows):
            ids = pl.concat(list(read_partition(ws, p, ["pair_id"])))["pair_id"].implode()
            everywhere = ws.scan("side").filter(pl.col("pair_id").is_in(ids)).collect().sort("pair_id")
            files = [s["file"] for s in parts_meeting(ws, "side", p)]
            mine = ws.scan("side", shards=[s for s in ws.manifest("side")["shards"] if s["file"] in files])
            assert mine.filter(pl.col("pair_id").is_in(ids)).collect().sort("pair_id").equals(everywhere)
            if all(file in new for file, _, _, _ in p.ranges):  # compacted rows only: each has one
                assert everywhere.height == p.rows
    # without the record (or with a new part gone since), every task reads them again
    records = ws.listdir(f"pool/{MOVED}")
    assert len(records) == 1
    ws.remove(f"pool/{MOVED}")
    assert met(2_100) == {0: 3, 1: 3}
