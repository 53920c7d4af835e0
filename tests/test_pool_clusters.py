"""A big ingest clusters the pool by pair_id (pipeline/ingest_parts.py): each part holds one range of
ids, sorted, so a shard of ids cut from a sorted list opens only the parts of its own range (counted
on a filesystem that records every open), and the pool holds what an unclustered ingest gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.judging import judge_in_shards
from pipeline import ingest_parts
from pipeline.ingest import ingest_source
from pipeline.ingest_parts import KEY_RANGE, range_cuts
from pipeline.judges import build_judges, judge_pairs
from pipeline.partitions import partition_holding
from pipeline.pool import clustered_share, load_records, parts_holding, pool_rows
from pipeline.sources import SourceSpec
from pipeline.store import Workspace
from schemas.config import JudgeConfig
from tests import flow_helpers
from tests.test_key_index import CountingMemoryFS, counting_workspace, opened_parts, write_pairs

prefect_api = flow_helpers.prefect_api


@pytest.fixture
def clustered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingests of 1,000 new pairs or more cluster into parts of about 500, row groups of 64."""
    monkeypatch.setattr(ingest_parts, "CLUSTER_ROWS", 1_000)
    monkeypatch.setattr(ingest_parts, "PART_ROWS", 500)
    monkeypatch.setattr(ingest_parts, "GROUP_ROWS", 64)


def write_math(path: Path, rows: range) -> Path:
    """Pairs a rule judge decides: each carries its reference answer."""
    lines = [json.dumps({"prompt": f"What is {i} + 1?", "chosen": f"It is \\boxed{{{i + 1}}}.",
                         "rejected": f"It is \\boxed{{{i + 2}}}.", "reference_answer": str(i + 1)})
             for i in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def pool_by_seq(ws: Workspace) -> pl.DataFrame:
    frame = pl.from_arrow(ws.read("pool"))
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("ingest_seq")


def test_range_cuts_cut_the_id_space_at_two_character_prefixes() -> None:
    assert range_cuts(1) == []
    assert range_cuts(4) == ["40", "80", "c0"]
    assert len(range_cuts(256)) == 255 and range_cuts(256)[:2] == ["01", "02"]


def test_a_big_ingest_writes_sorted_disjoint_ranges_holding_what_a_small_one_holds(
        tmp_path: Path, clustered: None) -> None:
    source = SourceSpec(str(write_pairs(tmp_path / "a.jsonl", range(3_000))), name="a")
    ws = Workspace(tmp_path / "clustered")
    stats = ingest_source(ws, source)
    assert stats.added == 3_000
    shards = ws.manifest("pool")["shards"]
    assert len(shards) == 6 and clustered_share(ws) == 1.0
    previous = ""
    for shard in shards:
        ids = pq.read_table(ws.path("pool", shard["file"]), columns=["pair_id"]).column(0).to_pylist()
        assert ids == sorted(ids) and shard[KEY_RANGE] == [ids[0], ids[-1]] and ids[0] > previous
        previous = ids[-1]
        assert pq.ParquetFile(ws.path("pool", shard["file"])).metadata.row_group(0).num_rows == 64
    # the same rows, numbered in source order, as an ingest that writes a part per batch
    ingest_parts.CLUSTER_ROWS = 10**9
    plain = Workspace(tmp_path / "plain")
    ingest_source(plain, source)
    assert clustered_share(plain) == 0.0 and not any(KEY_RANGE in s for s in plain.manifest("pool")["shards"])
    assert pool_by_seq(ws).equals(pool_by_seq(plain))
    # a second ingest over the first: its repeats stay out, its new pairs are numbered after
    more = SourceSpec(str(write_pairs(tmp_path / "b.jsonl", range(2_000, 4_500))), name="a")
    ingest_parts.CLUSTER_ROWS = 1_000
    assert ingest_source(ws, more).added == 1_500
    ingest_parts.CLUSTER_ROWS = 10**9
    assert ingest_source(plain, more).added == 1_500
    assert pool_by_seq(ws).equals(pool_by_seq(plain))
    assert pool_by_seq(ws)["ingest_seq"].to_list() == list(range(4_500))


def test_a_500_pair_shard_opens_only_the_parts_and_row_groups_of_its_own_ids(
        tmp_path: Path, clustered: None, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = counting_workspace()
    ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / "a.jsonl", range(4_000))), name="a"))
    shards = ws.manifest("pool")["shards"]
    assert len(shards) == 8
    ids = sorted(pool_by_seq(ws)["pair_id"].to_list())
    shard = ids[1_700:2_200]  # a 500-pair shard of the sorted list
    own = parts_holding(shards, shard)
    assert 1 <= len(own) <= 2
    groups: list[int] = []
    read_groups = pq.ParquetFile.read_row_groups

    def counted(self: pq.ParquetFile, row_groups: Any, *args: Any, **kwargs: Any) -> pa.Table:
        if kwargs.get("columns") == ["pair_id"]:
            groups.extend(row_groups)
        return read_groups(self, row_groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", counted)
    CountingMemoryFS.opened = []
    records = load_records(ws, shard[::-1])
    assert [r.pair_id for r in records] == shard[::-1]
    opened = {p.rsplit("/", 1)[1] for p in opened_parts(ws, "pool", CountingMemoryFS.opened, shards)}
    assert opened == {s["file"] for s in own}
    assert len(groups) <= 500 // 64 + 2 * len(own)  # the groups its ids span, not the parts' ~8 each
    # a shard of ids spread over the whole list opens every part; an unclustered pool, every part
    CountingMemoryFS.opened = []
    assert pool_rows(ws, ids[::8]).height == 500
    assert len(set(opened_parts(ws, "pool", CountingMemoryFS.opened, shards))) == 8
    partition = partition_holding(ws, shard)
    assert partition is not None and {r[0] for r in partition.ranges} == opened


def test_sharded_judging_on_a_clustered_pool_reads_each_shards_own_parts(
        tmp_path: Path, clustered: None, prefect_api: str) -> None:
    rules = [JudgeConfig(name="rules", kind="rule", batch_size=50)]
    ws = Workspace(tmp_path / "ws")
    ingest_source(ws, SourceSpec(str(write_math(tmp_path / "a.jsonl", range(2_000))), name="a"))
    wanted = pool_by_seq(ws)["pair_id"].to_list()[::-1][:600]
    result = judge_in_shards(ws, rules, None, wanted, 1, 0, shard_rows=200)  # type: ignore[arg-type]
    assert result["shards"] == 3 and "gathered" not in result  # no gather pass over the pool
    judged = pl.from_arrow(ws.read("judgments"))
    assert isinstance(judged, pl.DataFrame)
    # every judgments part names the pool parts of its shard's slice: those its pairs came from
    pool_parts = ws.manifest("pool")["shards"]
    assert len(pool_parts) == 4
    for part in ws.manifest("judgments")["shards"]:
        pairs = sorted(pq.read_table(ws.path("judgments", part["file"]), columns=["pair_id"])
                       .column(0).to_pylist())
        named = {r[0] for r in part["covers"]["ranges"]}
        assert {s["file"] for s in parts_holding(pool_parts, pairs)} <= named and len(named) <= 2
    other = Workspace(tmp_path / "other")
    ingest_parts.CLUSTER_ROWS = 10**9
    ingest_source(other, SourceSpec(str(tmp_path / "a.jsonl"), name="a"))
    judge_pairs(other, build_judges(rules), wanted, 1, 0)
    alone = pl.from_arrow(other.read("judgments"))
    assert isinstance(alone, pl.DataFrame)
    columns = ["pair_id", "judge", "verdict"]
    assert judged.height == alone.height == 600
    assert judged.sort("pair_id").select(columns).equals(alone.sort("pair_id").select(columns))
    assert judge_in_shards(ws, rules, None, wanted, 1, 0, shard_rows=200)["judgments_written"] == 0  # type: ignore[arg-type]


def test_a_clustered_commit_after_another_writers_keeps_source_order_and_its_ranges(
        tmp_path: Path, clustered: None) -> None:
    """Parts planned against an empty pool, another ingest commits first: the clustered parts are
    rewritten without the pairs it added, still sorted, numbered after them in source order."""
    from pipeline.ingest import IngestStats, PoolParts, _ingest

    ws = Workspace(tmp_path / "ws")
    late, stats = PoolParts.open(ws), IngestStats("a", "a.jsonl")
    _ingest(ws, SourceSpec(str(write_pairs(tmp_path / "a.jsonl", range(3_000))), name="a"), stats, late, None)
    assert len(late.parts) == 6 and all(KEY_RANGE in p for p in late.parts)
    ingest_parts.CLUSTER_ROWS = 10**9  # the other writer's part is one batch
    ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / "b.jsonl", range(2_500, 4_000))), name="b"))
    late.commit(stats)
    assert (stats.added, stats.duplicates) == (2_500, 500)
    pool = pool_by_seq(ws)
    assert pool["source"].to_list() == ["b"] * 1_500 + ["a"] * 2_500
    assert pool["ingest_seq"].to_list() == list(range(4_000))
    prompts = [c[0]["content"] for c in pool.filter(pl.col("source") == "a")["conversation"].to_list()]
    assert prompts == [f"Question {i}?" for i in range(2_500)]  # a's own order
    rewritten = [s for s in ws.manifest("pool")["shards"] if KEY_RANGE in s]
    assert len(rewritten) == 6 and ws.verify() == []
    for shard in rewritten:
        ids = pq.read_table(ws.path("pool", shard["file"]), columns=["pair_id"]).column(0).to_pylist()
        assert ids == sorted(ids) and shard[KEY_RANGE] == [ids[0], ids[-1]]


def test_discarding_a_range_that_wrote_nothing_removes_nothing(tmp_path: Path) -> None:
    from pipeline.parts import discard

    ws = Workspace(tmp_path / "ws")
    ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / "a.jsonl", range(10))), name="a"))
    discard(ws, "pool", [{"file": "", "rows": 0}])
    assert ws.row_count("pool") == 10 and ws.verify() == []


def test_bench_lookup_compares_the_two_layouts_on_the_same_shards(tmp_path: Path, clustered: None) -> None:
    import re

    from typer.testing import CliRunner

    from flows.cli.main import app

    result = CliRunner().invoke(app, ["bench", "lookup", "--pairs", "3000", "--ids", "1000", "--shard", "100",
                                      "--shards", "3", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    line = (r"layout=(.+?)\s+ingest s=\S+\s+compact s=\S+\s+pool parts=(\d+)\s+s per shard=\S+\s+"
            r"parts opened=([\d.]+)")
    found = {layout: (int(parts), float(opened)) for layout, parts, opened in re.findall(line, result.output)}
    assert set(found) == {"clustered", "a part per batch", "a part per batch, compacted"}
    assert found["clustered"][1] <= 2 < found["clustered"][0]  # a shard opens its own slice's parts
    assert found["a part per batch"][1] == found["a part per batch"][0]  # every part
    assert found["a part per batch, compacted"] == found["clustered"]
    assert ingest_parts.CLUSTER_ROWS == 1_000  # the bench put the threshold back


def test_a_lookup_names_a_missing_pool_part(tmp_path: Path, clustered: None) -> None:
    from pipeline.store import WorkspaceError

    ws = Workspace(tmp_path / "ws")
    ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / "a.jsonl", range(2_000))), name="a"))
    shard = ws.manifest("pool")["shards"][1]
    ids = pq.read_table(ws.path("pool", shard["file"]), columns=["pair_id"]).column(0).to_pylist()[:5]
    Path(ws.path("pool", shard["file"])).unlink()
    with pytest.raises(WorkspaceError, match=f"table pool is damaged: part {shard['file']} is missing"):
        load_records(ws, ids)
