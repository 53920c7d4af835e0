"""The stage contract: partitions from the manifest, filters and global steps, one commit, and the
ported cleaning stages giving exactly what the stages before the contract gave."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pipeline.clean import Decontamination, ExactDedup, decontaminate, exact_dedup
from pipeline.ingest import ingest_source
from pipeline.sources import SourceSpec
from pipeline.stage import STEPS, PoolFilter, plan_partitions, run_local
from pipeline.store import Workspace

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
BENCHMARK = DATA / "llmbar-natural" / "dataset.json"
GOLDEN = Path(__file__).parent / "fixtures" / "stage" / "sample_dropped.json"
"""What exact dedup and decontamination dropped on `sample_workspace` before they were ported
onto pipeline/stage.py (written by the earlier pipeline/clean.py, rows sorted by pair_id)."""


def sample_workspace(root: Path) -> Workspace:
    """The bundled sample, plus two sources that give the cleaning stages work: spacing and case
    variants of the UltraFeedback pairs, and the LLMBar benchmark itself as a source."""
    ws = Workspace(root / "ws")
    for path, fmt, name in [("hh-rlhf/harmless-base/test.jsonl.gz", "hh-rlhf", "hh-rlhf/harmless-base"),
                            ("hh-rlhf/helpful-base/test.jsonl.gz", "hh-rlhf", "hh-rlhf/helpful-base"),
                            ("ultrafeedback/eval_clean.jsonl", "prompt-chosen-rejected", "ultrafeedback")]:
        ingest_source(ws, SourceSpec(str(DATA / path), fmt, name))
    variants = root / "variants.jsonl"
    with open(DATA / "ultrafeedback" / "eval_clean.jsonl") as src, open(variants, "w") as out:
        for i, line in enumerate(src):
            row = json.loads(line)
            if i % 2 == 0:
                row = {**row, "prompt": row["prompt"].upper(), "chosen": row["chosen"].replace(" ", "  ")}
            out.write(json.dumps(row) + "\n")
    ingest_source(ws, SourceSpec(str(variants), "prompt-chosen-rejected", "ultrafeedback-variants"))
    ingest_source(ws, SourceSpec(str(BENCHMARK), name="llmbar"))
    return ws


def cleaning_drops(ws: Workspace) -> list[dict[str, object]]:
    frame = pl.from_arrow(ws.read("dropped"))
    assert isinstance(frame, pl.DataFrame)
    return frame.filter(pl.col("stage") != "ingest").sort("pair_id").to_dicts()


@pytest.mark.parametrize("rows_per_partition", [100_000, 700])
def test_ported_stages_drop_exactly_what_the_old_stages_dropped(tmp_path: Path,
                                                                rows_per_partition: int) -> None:
    ws = sample_workspace(tmp_path)
    dedup = exact_dedup(ws, batch_rows=rows_per_partition)
    decontam = decontaminate(ws, [str(BENCHMARK)], batch_rows=rows_per_partition)
    # The golden rows name the benchmark file by path; this checkout's path stands in for it.
    golden = json.loads(GOLDEN.read_text().replace("{BENCHMARK}", json.dumps(str(BENCHMARK))[1:-1]))
    assert (dedup.dropped, decontam.dropped) == (golden["exact-dedup"], golden["decontamination"])
    assert cleaning_drops(ws) == golden["rows"]  # same rows, reasons, kept pairs and details
    assert (dedup.examined, decontam.examined) == (5055, 5055 - 99)  # as the old stages counted
    assert decontam.detail == {"benchmark_items": 100, "benchmark_ngrams": golden["benchmark_ngrams"]}
    assert exact_dedup(ws).dropped == 0 and decontaminate(ws, [str(BENCHMARK)]).dropped == 0


def test_partitions_cover_the_pool_once_from_the_manifest(tmp_path: Path) -> None:
    ws = sample_workspace(tmp_path)
    parts = plan_partitions(ws, 700)
    assert [p.index for p in parts] == list(range(len(parts)))
    assert all(p.rows == 700 for p in parts[:-1]) and 0 < parts[-1].rows <= 700
    assert sum(p.rows for p in parts) == ws.row_count("pool")
    covered = [(f, s + i) for p in parts for f, _, s, n in p.ranges for i in range(n)]
    assert len(covered) == len(set(covered)) == ws.row_count("pool")


def test_a_global_step_gives_the_same_drops_for_any_partitions_and_buckets(tmp_path: Path) -> None:
    ws = sample_workspace(tmp_path)
    first = run_local(ws, ExactDedup(buckets=1), rows_per_partition=100_000)
    one = cleaning_drops(ws)
    ws.remove("dropped")
    again = run_local(ws, ExactDedup(buckets=7), rows_per_partition=333)
    assert cleaning_drops(ws) == one and again.dropped == first.dropped > 0
    assert again.tasks > first.tasks  # maps per partition plus reduces per bucket
    assert not ws.exists("_shuffle/exact-dedup") or ws.listdir("_shuffle/exact-dedup") == []


def test_threads_in_one_process_commit_the_parts_one_thread_commits(tmp_path: Path) -> None:
    ws = sample_workspace(tmp_path)
    ws.remove("dropped")
    run_local(ws, ExactDedup(buckets=5), rows_per_partition=400, threads=1)
    one = [part["sha256"] for part in ws.manifest("dropped")["shards"]]
    ws.remove("dropped")
    stats = run_local(ws, ExactDedup(buckets=5), rows_per_partition=400, threads=3)
    assert [part["sha256"] for part in ws.manifest("dropped")["shards"]] == one and stats.dropped > 0


class FailsOnItsThirdPartition(PoolFilter):
    """Drops every pair, and fails on one partition while the others are written."""

    name = "test-fails-on-its-third-partition"
    reads = ("pair_id",)
    seen = 0

    def decide(self, batch: pl.DataFrame) -> pl.DataFrame:
        type(self).seen += 1
        if type(self).seen == 3:
            raise RuntimeError("partition 3 is unreadable")
        return batch.select("pair_id", pl.lit("everything").alias("reason"))


def test_a_failed_partition_on_threads_commits_nothing_and_leaves_no_parts(tmp_path: Path) -> None:
    ws = sample_workspace(tmp_path)
    before = sorted(ws.listdir("dropped"))
    FailsOnItsThirdPartition.seen = 0
    with pytest.raises(RuntimeError, match="partition 3"):
        run_local(ws, FailsOnItsThirdPartition(), rows_per_partition=500, threads=2)
    assert sorted(ws.listdir("dropped")) == before and ws.verify() == []


class ShortChosen(PoolFilter):
    """A filter as a new module would write it: only `decide`."""

    name = "test-short-chosen"
    reads = ("pair_id", "chosen")

    def decide(self, batch: pl.DataFrame) -> pl.DataFrame:
        return batch.filter(pl.col("chosen").str.len_chars() < 20).select(
            "pair_id", pl.lit("short-chosen").alias("reason"))


def test_a_new_filter_is_only_decide(tmp_path: Path) -> None:
    ws = sample_workspace(tmp_path)
    assert STEPS["test-short-chosen"] is ShortChosen and STEPS["decontamination"] is Decontamination
    pool = pl.from_arrow(ws.read("pool", columns=["pair_id", "chosen"]))
    assert isinstance(pool, pl.DataFrame)
    short = set(pool.filter(pl.col("chosen").str.len_chars() < 20)["pair_id"])
    stats = run_local(ws, ShortChosen(), rows_per_partition=1000)
    assert stats.dropped == len(short) > 0 and stats.examined == pool.height
    assert stats.tasks == len(plan_partitions(ws, 1000))
    assert {r["pair_id"] for r in cleaning_drops(ws)} == short
    assert run_local(ws, ShortChosen()).examined == pool.height - len(short)  # the active pool only
    assert ws.verify() == []  # parts committed, nothing left behind


def test_a_task_refuses_a_missing_or_altered_part_by_name(tmp_path: Path) -> None:
    from pipeline.stage import read_partition
    from pipeline.store import WorkspaceError

    ws = sample_workspace(tmp_path)
    first = plan_partitions(ws, 700)[0]
    file = first.ranges[0][0]
    part = Path(ws.path("pool", file))
    part.write_bytes(part.read_bytes()[:-100])
    with pytest.raises(WorkspaceError, match=rf"table pool is damaged: part {file} does not match"):
        list(read_partition(ws, first, ["pair_id"]))
    part.unlink()
    with pytest.raises(WorkspaceError, match=rf"table pool is damaged: part {file} is missing"):
        list(read_partition(ws, first, ["pair_id"]))
