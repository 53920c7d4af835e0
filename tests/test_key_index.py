"""The key indexes of pool and dropped: an ingest batch and a stage task read only their own ids'
buckets, never every id; workspaces without an index gain one on first need.

Reads are counted on a real fsspec filesystem (an in-memory one that records every file it opens).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, ClassVar

import fsspec.implementations.memory as memory
import polars as pl
import pyarrow as pa
import pytest

from pipeline import key_index
from pipeline.ingest import ingest_source
from pipeline.key_index import DROPPED_KEYS, POOL_KEYS, buckets_of
from pipeline.pool import active_pool, dropped_ids
from pipeline.sources import SourceSpec
from pipeline.stage import PoolFilter, plan_partitions, run_local
from pipeline.store import Workspace
from schemas.pair import DROPPED_SCHEMA


class CountingMemoryFS(memory.MemoryFileSystem):
    """The in-memory filesystem (same store), recording the path of every file opened."""

    opened: ClassVar[list[str]] = []

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        CountingMemoryFS.opened.append(self._strip_protocol(path))
        return super()._open(path, mode, *args, **kwargs)


def counting_workspace() -> Workspace:
    ws = Workspace(f"memory://synpref-keys-{uuid.uuid4().hex[:8]}")
    ws.fs = CountingMemoryFS()
    CountingMemoryFS.opened = []
    return ws


def write_pairs(path: Path, rows: range, name: str = "") -> Path:
    lines = [json.dumps({"prompt": f"Question {i}{name}?", "chosen": f"Answer {i}.", "rejected": "No."})
             for i in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def opened_buckets(table: str, opened: list[str]) -> set[str]:
    prefix = f"/{key_index.ROOT}/{table}/bucket="
    return {p.split(prefix, 1)[1].split("/", 1)[0] for p in opened if prefix in p}


def opened_parts(ws: Workspace, table: str, opened: list[str], shards: list[dict[str, Any]]) -> list[str]:
    """The parts among `shards` (a manifest's) that were opened."""
    names = {ws.path(table, s["file"]).removeprefix("memory://") for s in shards}
    return [p for p in opened if p in names]


def test_an_ingest_batch_opens_only_its_own_buckets_key_files(tmp_path: Path) -> None:
    ws = counting_workspace()
    first = ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / "a.jsonl", range(500))), name="a"))
    assert first.added == 500
    indexed = POOL_KEYS.state(ws)
    assert len(indexed.files) > 200  # 500 ids fill most of the 256 buckets
    CountingMemoryFS.opened = []
    before = ws.manifest("pool")["shards"]
    # 10 pairs the pool holds (from another origin: duplicates) and 10 new ones
    second = ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / "b.jsonl", range(490, 510))), name="b"))
    opened = list(CountingMemoryFS.opened)
    assert (second.added, second.duplicates, second.already_present) == (10, 10, 0)
    pool = pl.from_arrow(ws.read("pool", columns=["pair_id", "source"]))
    assert isinstance(pool, pl.DataFrame)
    dropped = pl.from_arrow(ws.read("dropped"))
    assert isinstance(dropped, pl.DataFrame)
    ids = pl.concat([pool.filter(pl.col("source") == "b")["pair_id"], dropped["kept_pair_id"]])
    own = set(buckets_of(ids))
    read = opened_buckets("pool", opened)
    assert read and read <= own and len(read) <= 20
    assert not opened_parts(ws, "pool", opened, before)  # no pooled part read to tell repeats
    seqs = ws.read("pool", columns=["ingest_seq"]).column("ingest_seq").to_pylist()
    assert sorted(seqs) == list(range(510))
    # the index now holds every pooled pair, under its origin
    state = POOL_KEYS.state(ws)
    keys = pl.concat([k for b in state.files if (k := POOL_KEYS.read_bucket(ws, state, b)) is not None])
    assert sorted(keys["pair_id"]) == sorted(pool["pair_id"])
    assert set(keys.filter(pl.col("origin").str.starts_with("b\x1f"))["pair_id"]) == set(
        pool.filter(pl.col("source") == "b")["pair_id"])


def test_a_pool_without_an_index_gains_one_and_reingest_adds_nothing(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    a = write_pairs(tmp_path / "a.jsonl", range(300))
    ingest_source(ws, SourceSpec(str(a), name="a"))
    ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / "b.jsonl", range(250, 400))), name="b"))
    ws.remove(key_index.ROOT)  # as a workspace written before the index existed
    again = ingest_source(ws, SourceSpec(str(a), name="a"))
    assert (again.added, again.already_present, again.duplicates) == (0, 300, 0)
    state = POOL_KEYS.state(ws)
    assert set(state.covers) == {s["file"] for s in ws.manifest("pool")["shards"]}
    assert max(state.covers.values()) == 399  # the largest ingest_seq, for the next ingest
    more = ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / "c.jsonl", range(390, 420))), name="c"))
    assert (more.added, more.duplicates) == (20, 10)
    seqs = ws.read("pool", columns=["ingest_seq"]).column("ingest_seq").to_pylist()
    assert sorted(seqs) == list(range(420))
    assert ws.verify() == []
    assert not ws.exists("_ingest") or not ws.listdir("_ingest")  # scratch removed


def test_bucket_files_are_merged_and_the_index_matches_the_pool(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_index, "MERGE_AT", 2)
    ws = Workspace(tmp_path / "ws")
    for i in range(5):
        ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / f"{i}.jsonl", range(i * 200, i * 200 + 300))),
                                     name=f"s{i}"))
    state = POOL_KEYS.state(ws)
    assert max(len(files) for files in state.files.values()) <= 2
    on_disk = {p.name for p in (tmp_path / "ws" / key_index.ROOT / "pool").rglob("keys-*.parquet")}
    assert on_disk == {f["file"] for files in state.files.values() for f in files}  # merged files removed
    keys = pl.concat([k for b in state.files if (k := POOL_KEYS.read_bucket(ws, state, b)) is not None])
    pool = pl.from_arrow(ws.read("pool", columns=["pair_id", "source"]))
    assert isinstance(pool, pl.DataFrame)
    assert keys.height == pool.height == 1100
    assert sorted(keys["pair_id"]) == sorted(pool["pair_id"])


class DropsNines(PoolFilter):
    """Drops pairs whose chosen answer holds a 9 (a stage of the contract, for these tests)."""

    name = "test-drops-nines"
    reads = ("pair_id", "chosen")

    def decide(self, batch: pl.DataFrame) -> pl.DataFrame:
        hit = batch.filter(pl.col("chosen").str.contains("9"))
        return hit.select("pair_id", pl.lit("has-nine").alias("reason"))


class DropsEights(DropsNines):
    name = "test-drops-eights"

    def decide(self, batch: pl.DataFrame) -> pl.DataFrame:
        hit = batch.filter(pl.col("chosen").str.contains("8"))
        return hit.select("pair_id", pl.lit("has-eight").alias("reason"))


def test_a_stage_task_reads_only_its_own_buckets_of_dropped(tmp_path: Path) -> None:
    ws = counting_workspace()
    ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / "a.jsonl", range(500))), name="a"))
    nines = run_local(ws, DropsNines(), rows_per_partition=100)
    assert nines.dropped == 95  # 9, 19, ... 90-99, 190-199, ...
    assert len(DROPPED_KEYS.sync(ws).files) > 50
    partition = plan_partitions(ws, 20)[3]  # 20 pairs
    ids = pl.Series(pl.from_arrow(ws.read("pool", columns=["pair_id"]))["pair_id"][60:80])  # type: ignore[index]
    CountingMemoryFS.opened = []
    receipt = DropsEights().run(ws, partition)
    shards = ws.manifest("dropped")["shards"]
    read = opened_buckets("dropped", CountingMemoryFS.opened)
    assert read and read <= set(buckets_of(ids))
    assert not opened_parts(ws, "dropped", CountingMemoryFS.opened, shards)  # no dropped part read
    assert receipt["dropped_seen"] == len(ws.manifest("dropped")["shards"])
    # 68 and 78 are dropped by this task; 69 and 79 were dropped before, so never examined
    assert receipt["examined"] == 18 and receipt["rows"] == 2
    CountingMemoryFS.opened = []
    eights = DropsEights().commit(ws, [receipt])
    assert eights.dropped == 2
    assert not opened_parts(ws, "dropped", CountingMemoryFS.opened, shards)  # none committed since
    assert set(dropped_ids(ws)["pair_id"]) >= set(ids[8:9]) | set(ids[18:19])
    again = run_local(ws, DropsNines(), rows_per_partition=100)
    assert again.dropped == 0 and again.examined == 500 - 95 - 2


def test_drops_committed_by_another_writer_meanwhile_are_not_repeated(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / "a.jsonl", range(100))), name="a"))
    step = DropsNines()
    receipts = [step.run(ws, p) for p in plan_partitions(ws, 50)]
    run_local(ws, DropsNines())  # lands the same drops first
    assert step.commit(ws, receipts).dropped == 0
    frame = pl.from_arrow(ws.read("dropped", columns=["pair_id"]))
    assert isinstance(frame, pl.DataFrame)
    assert frame.height == frame["pair_id"].n_unique() == 19


def test_an_ingest_row_under_a_pooled_pairs_id_keeps_its_key_unique(tmp_path: Path) -> None:
    """A tie recorded under its content id by an older synpref: the pair stays active, and a
    stage that would drop it adds no second row under that key (as the keyed commit always did)."""
    ws = Workspace(tmp_path / "ws")
    ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / "a.jsonl", range(20))), name="a"))
    pool = pl.from_arrow(ws.read("pool", columns=["pair_id", "chosen"]))
    assert isinstance(pool, pl.DataFrame)
    nine = pool.filter(pl.col("chosen") == "Answer 9.")["pair_id"][0]
    legacy = {"pair_id": nine, "stage": "ingest", "reason": "tie", "kept_pair_id": "",
              "similarity": None, "detail": "{}"}
    ws.append("dropped", pa.Table.from_pylist([legacy], schema=DROPPED_SCHEMA), schema=DROPPED_SCHEMA)
    stats = run_local(ws, DropsNines(), rows_per_partition=7)
    assert stats.examined == 20 and stats.dropped == 1  # 19; 9's key is taken
    frame = pl.from_arrow(ws.read("dropped", columns=["pair_id"]))
    assert isinstance(frame, pl.DataFrame)
    assert frame.height == frame["pair_id"].n_unique() == 2
    assert nine in active_pool(ws).collect()["pair_id"].to_list()


def test_a_replaced_pool_starts_its_index_over(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    a = write_pairs(tmp_path / "a.jsonl", range(60))
    ingest_source(ws, SourceSpec(str(a), name="a"))
    kept = ws.read("pool").slice(0, 20)
    ws.replace("pool", kept)  # as pipeline/quality/meter.py does to a workspace of its own
    again = ingest_source(ws, SourceSpec(str(a), name="a"))
    assert (again.added, again.already_present, again.duplicates) == (40, 20, 0)
    state = POOL_KEYS.state(ws)
    assert set(state.covers) == {s["file"] for s in ws.manifest("pool")["shards"]}
    assert sum(f["rows"] for files in state.files.values() for f in files) == 60


def test_a_reader_of_files_merged_meanwhile_reads_the_merged_file(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace(tmp_path / "ws")
    for i in range(2):
        ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / f"{i}.jsonl", range(i * 100, i * 100 + 100))),
                                     name=f"s{i}"))
    old = POOL_KEYS.state(ws)
    bucket = max(old.files, key=lambda b: len(old.files[b]))
    expected = POOL_KEYS.read_bucket(ws, old, bucket)
    assert expected is not None and len(old.files[bucket]) == 2
    monkeypatch.setattr(key_index, "MERGE_AT", 2)
    POOL_KEYS.add(ws, {"part-of-another-writer.parquet": 0}, [(bucket, expected.head(1))])  # a third file
    assert not (tmp_path / "ws" / key_index.ROOT / "pool" / f"bucket={bucket}" / old.files[bucket][0]["file"]
                ).exists()  # merged away
    got = POOL_KEYS.read_bucket(ws, old, bucket)  # with the state read before the merge
    assert got is not None and set(expected["pair_id"]) <= set(got["pair_id"])


def test_a_merge_keeps_the_files_that_outweigh_the_rest_so_keys_are_rewritten_a_few_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 additions of 10 keys to one bucket (an index grown by many small ingests): merging every
    file at every 5th file would rewrite 4,950 keys; keeping the files that hold more keys than all
    the smaller ones together rewrites each key about log2(64) times at most."""
    monkeypatch.setattr(key_index, "MERGE_AT", 4)
    written: list[int] = []
    write = key_index.KeyIndex._write

    def counting(self: key_index.KeyIndex, ws: Workspace, bucket: str, keys: pl.DataFrame,
                 root: str | None = None) -> dict[str, Any]:
        written.append(keys.height)
        return write(self, ws, bucket, keys, root)

    monkeypatch.setattr(key_index.KeyIndex, "_write", counting)
    ws = Workspace(tmp_path / "ws")
    ids: list[str] = []
    for i in range(64):
        batch = [f"ab{i:04d}{j:02d}".ljust(32, "0") for j in range(10)]
        ids += batch
        keys = pl.DataFrame({"pair_id": batch, "origin": ["s"] * 10})
        POOL_KEYS.add(ws, {f"part-{i}.parquet": i}, [("ab", keys)])
    state = POOL_KEYS.state(ws)
    indexed = POOL_KEYS.read_bucket(ws, state, "ab")
    assert indexed is not None and sorted(indexed["pair_id"]) == sorted(ids)  # every key once
    assert len(state.files["ab"]) <= 4
    on_disk = {p.name for p in (tmp_path / "ws" / key_index.ROOT / "pool").rglob("keys-*.parquet")}
    assert on_disk == {f["file"] for f in state.files["ab"]}  # merged files removed
    rewritten = sum(written) - len(ids)
    assert 0 < rewritten <= 1_900
    assert key_index.outweighing([{"rows": 9}, {"rows": 1}, {"rows": 4}, {"rows": 2}, {"rows": 1}]) == [
        {"rows": 9}]  # 9 outweighs 4 + 2 + 1 + 1; 4 does not outweigh 2 + 1 + 1
