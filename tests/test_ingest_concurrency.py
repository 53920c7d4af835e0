"""Concurrent ingests into one workspace: every pair once, unique `ingest_seq`, no erased commits.

Real processes (multiprocessing 'spawn') write real Parquet; they start together at a Barrier,
and a writer is held at its commit point with the store's pause hook, never with sleeps.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline import key_index
from pipeline.ingest import PoolParts, ingest_source
from pipeline.key_index import POOL_KEYS
from pipeline.pool import active_pool
from pipeline.sources import SourceReadError, SourceSpec
from pipeline.store import Workspace
from tests.test_store_concurrency import HH_FILES, _sequential_pool

SPAWN = mp.get_context("spawn")


def write_pairs(path: Path, rows: Iterable[int], *, broken: bool = False) -> Path:
    lines = [json.dumps({"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": "No."})
             for i in rows]
    path.write_text("\n".join([*lines, *(["not json"] if broken else [])]) + "\n")
    return path


def pool_frame(ws: Workspace) -> pl.DataFrame:
    frame = pl.from_arrow(ws.read("pool", columns=["pair_id", "source", "ingest_seq"]))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _ingest(root: str, path: str, name: str | None, barrier: Any) -> None:
    barrier.wait()
    ingest_source(Workspace(root), SourceSpec(path, name=name))


def run_together(root: str, jobs: list[tuple[str, str | None]]) -> None:
    barrier = SPAWN.Barrier(len(jobs))
    procs = [SPAWN.Process(target=_ingest, args=(root, path, name, barrier)) for path, name in jobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0


@pytest.mark.skipif(len(HH_FILES) < 2, reason="needs HH-RLHF test files")
def test_concurrent_ingests_number_every_pair_once(tmp_path: Path) -> None:
    root = str(tmp_path / "ws")
    run_together(root, [(f, None) for f in HH_FILES])
    ws = Workspace(root)
    pool = pool_frame(ws)
    assert pool["pair_id"].n_unique() == pool.height
    assert set(pool["pair_id"]) == _sequential_pool(tmp_path, HH_FILES)
    assert sorted(pool["ingest_seq"]) == list(range(pool.height))  # unique, no gaps
    # each source's pairs are numbered in their file order, one block per commit
    for _, block in pool.sort("ingest_seq").group_by("source", maintain_order=True):
        seqs = block["ingest_seq"].to_list()
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert ws.verify() == []  # parts rewritten under the lock left no orphans


def test_overlapping_concurrent_ingests_add_each_pair_once(tmp_path: Path) -> None:
    a = write_pairs(tmp_path / "a.jsonl", range(0, 300))
    b = write_pairs(tmp_path / "b.jsonl", range(150, 450))
    root = str(tmp_path / "ws")
    run_together(root, [(str(a), "a"), (str(b), "b"), (str(a), "a")])
    ws = Workspace(root)
    pool = pool_frame(ws)
    assert pool.height == pool["pair_id"].n_unique() == 450
    assert sorted(pool["ingest_seq"]) == list(range(450))
    dropped = pl.from_arrow(ws.read("dropped"))
    assert isinstance(dropped, pl.DataFrame)
    # the 150 shared pairs are kept once; the other origin's rows are recorded as duplicates
    assert dropped["reason"].to_list() == ["exact-duplicate"] * 150
    assert set(dropped["kept_pair_id"]) <= set(pool["pair_id"])
    assert not set(dropped["pair_id"]) & set(pool["pair_id"])
    loser = pool.group_by("source").len().sort("len")["source"][0]
    assert {json.loads(d)["source"] for d in dropped["detail"]} == {loser}
    assert active_pool(ws).select(pl.len()).collect().item() == 450
    assert ws.verify() == []


def test_a_commit_renumbers_and_skips_pairs_committed_after_its_parts(tmp_path: Path) -> None:
    """The race, step by step: parts planned against an empty pool, another ingest commits first."""
    ws = Workspace(tmp_path / "ws")
    late = PoolParts.open(ws)
    from pipeline.ingest import IngestStats, _ingest

    stats = IngestStats("a", "a.jsonl")
    side = _ingest(ws, SourceSpec(str(write_pairs(tmp_path / "a.jsonl", range(0, 10))), name="a"),
                   stats, late, None)
    assert not ws.has_table("pool") and len(late.parts) == 1  # written, not committed
    ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / "b.jsonl", range(5, 20))), name="b"))
    late.commit(stats)
    assert (stats.added, stats.duplicates, stats.already_present) == (5, 5, 0)
    pool = pool_frame(ws).sort("ingest_seq")
    assert pool["source"].to_list() == ["b"] * 15 + ["a"] * 5
    assert pool["ingest_seq"].to_list() == list(range(20))
    assert [t.num_rows for t in late.late_duplicates] == [5]
    assert not any(t.num_rows for t in side["dropped"])
    assert ws.verify() == []  # the part planned first was replaced, not left behind
    # the late ingest's index files were staged by its repeat job before the race: the buckets of
    # the 5 pairs the other ingest took are rewritten without them, so each pair is indexed once,
    # under the origin that pooled it, and no unlisted key file is left in the index
    late.index()
    late.cleanup()
    state = POOL_KEYS.state(ws)
    keys = pl.concat([k for b in state.files if (k := POOL_KEYS.read_bucket(ws, state, b)) is not None])
    assert sorted(keys["pair_id"]) == sorted(pool["pair_id"])
    origins = dict(zip(keys["pair_id"], keys["origin"].str.split("\x1f").list.first(), strict=True))
    assert origins == dict(zip(pool["pair_id"], pool["source"], strict=True))
    on_disk = {p.name for p in (tmp_path / "ws" / key_index.ROOT / "pool").rglob("keys-*.parquet")}
    assert on_disk == {f["file"] for files in state.files.values() for f in files}
    assert not (tmp_path / "ws" / "_ingest").exists() or not any((tmp_path / "ws" / "_ingest").iterdir())


def _failing_ingest(root: str, folder: str, read_one: Any, go: Any) -> None:
    """Ingest `folder`, stopping after its first batch until `go`; its next file cannot be read."""
    import pipeline.ingest as ingest

    batches = ingest.iter_pair_batches

    def held(spec: SourceSpec, **how: Any) -> Any:
        for i, batch in enumerate(batches(spec, **how)):
            yield batch
            if i == 0:
                read_one.set()
                go.wait()

    ingest.iter_pair_batches = held
    with pytest.raises(SourceReadError):
        ingest_source(Workspace(root), SourceSpec(folder, format="prompt-chosen-rejected"))


def test_a_failing_ingest_never_erases_another_writers_commit(tmp_path: Path) -> None:
    """A source that fails after another ingest committed must not take that commit with it."""
    ws = Workspace(tmp_path / "ws")
    ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / "seed.jsonl", range(3))), name="seed"))
    folder = tmp_path / "folder"
    folder.mkdir()
    write_pairs(folder / "a.jsonl", range(100, 110), broken=True)
    (folder / "b.json").write_text('[{"prompt": "q", ')  # cannot be parsed: the ingest fails here
    read_one, go = SPAWN.Event(), SPAWN.Event()
    proc = SPAWN.Process(target=_failing_ingest, args=(ws.uri, str(folder), read_one, go))
    proc.start()
    assert read_one.wait(300), "the failing ingest never read its first batch"
    other = ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / "c.jsonl", range(200, 220))), name="c"))
    assert other.added == 20  # committed while the first ingest is still running
    go.set()
    proc.join(timeout=300)
    assert proc.exitcode == 0  # it raised SourceReadError, as the child asserted
    pool = pool_frame(ws)
    assert sorted(pool["source"].to_list()) == ["c"] * 20 + ["seed"] * 3
    assert sorted(pool["ingest_seq"]) == list(range(23))
    assert ws.row_count("quarantine") == 0
    assert ws.verify() == []  # the failed ingest removed its parts
