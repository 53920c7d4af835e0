"""Sources committed together (`commit_sources`, the ingest flow's commit): their repeats told in
one pass of jobs for all of them, each source's rows against the pool and the sources before it,
then each source committed in order. The pool, dropped and quarantine parts are those of ingesting
the sources one after another, byte for byte, and a failing commit keeps the sources before it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline import ingest, ingest_repeats, ingest_together
from pipeline.ingest import PoolParts, commit_sources, file_token, ingest_source, plan_units, stage_file
from pipeline.key_index import POOL_KEYS
from pipeline.sources import SourceSpec
from pipeline.store import Workspace
from tests.test_ingest_concurrency import write_pairs

TABLES = ("pool", "dropped", "quarantine")
COUNTS = ("rows_read", "added", "already_present", "duplicates", "quarantined", "dropped")


def sources(tmp_path: Path) -> list[SourceSpec]:
    """Repeats within a source, across sources from other origins, and a source listed twice."""
    a = write_pairs(tmp_path / "a.jsonl", [*range(300), 5, 17], broken=True)
    b = write_pairs(tmp_path / "b.jsonl", list(range(150, 450)))
    c = write_pairs(tmp_path / "c.jsonl", [*range(440, 470), *range(10)])
    return [SourceSpec(str(a), name="a"), SourceSpec(str(b), name="b"), SourceSpec(str(a), name="a"),
            SourceSpec(str(c), name="c")]


def seeded(root: Path, tmp_path: Path) -> Workspace:
    """A workspace whose pool already holds some of the pairs."""
    ws = Workspace(root)
    seed = write_pairs(tmp_path / "seed.jsonl", list(range(100, 120)))
    ingest_source(ws, SourceSpec(str(seed), name="seed"))
    return ws


def staged(ws: Workspace, specs: list[SourceSpec], run: str) -> tuple[list[list[dict[str, Any]]], list[str]]:
    tokens = [f"{run}/s{i:04d}" for i in range(len(specs))]
    receipts = [[stage_file(ws, spec, unit, file_token(token, j)) for j, unit in enumerate(plan_units(spec))]
                for spec, token in zip(specs, tokens, strict=True)]
    return receipts, tokens


def part_hashes(ws: Workspace) -> dict[str, list[str]]:
    return {t: [s["sha256"] for s in ws.manifest(t)["shards"]] for t in TABLES}


def index_keys(ws: Workspace) -> list[tuple[str, str]]:
    state = POOL_KEYS.state(ws)
    keys = pl.concat([k for b in state.files if (k := POOL_KEYS.read_bucket(ws, state, b)) is not None])
    return sorted(keys.select("pair_id", "origin").iter_rows())


@pytest.mark.parametrize(("job_rows", "open_runs"), [(500_000, 256), (40, 256), (40, 1)])
def test_sources_split_together_commit_what_one_after_another_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job_rows: int, open_runs: int
) -> None:
    specs = sources(tmp_path)
    reference = seeded(tmp_path / "one-by-one", tmp_path)
    expected = [ingest_source(reference, spec).as_dict() for spec in specs]
    monkeypatch.setattr(ingest_together, "REPEAT_JOB_ROWS", job_rows)  # 1 job, or 16 over bucket ranges
    monkeypatch.setattr(ingest_repeats, "MAX_OPEN_RUNS", open_runs)  # 1: runs opened per bucket
    ws = seeded(tmp_path / "together", tmp_path)
    receipts, tokens = staged(ws, specs, "run")
    stats = commit_sources(ws, specs, receipts, tokens)
    got = [{k: getattr(s, k) for k in COUNTS} for s in stats]
    assert got == [{k: e[k] for k in COUNTS} for e in expected]
    assert [e["already_present"] for e in expected][2] == 280  # the source listed twice
    assert sum(e["duplicates"] for e in expected) > 150  # repeats from other origins
    assert part_hashes(ws) == part_hashes(reference)
    assert index_keys(ws) == index_keys(reference)  # every pooled pair once, under its origin
    assert ws.verify() == [] and not ws.listdir("_ingest/run")  # each source's scratch removed


def test_a_writer_committing_between_the_split_and_the_commits_loses_nothing_and_leaves_no_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another ingest commits pairs of the first source after the sources were split: the first
    source's commit leaves those pairs out and renumbers, and the second's follows it without a
    gap, though its parts were numbered for all of the first source's rows."""
    specs = sources(tmp_path)
    ws = seeded(tmp_path / "ws", tmp_path)
    receipts, tokens = staged(ws, specs, "run")
    other = write_pairs(tmp_path / "other.jsonl", [*range(280, 300), 1000])  # 20 of a's pairs, 1 new
    write = ingest.write_parts

    def another_writer_first(*args: Any) -> None:
        ingest_source(ws, SourceSpec(str(other), name="other"))
        write(*args)

    monkeypatch.setattr(ingest, "write_parts", another_writer_first)
    stats = commit_sources(ws, specs, receipts, tokens)
    assert [s.added for s in stats] == [260, 150, 0, 20]
    pool = pl.from_arrow(ws.read("pool", columns=["pair_id", "source", "ingest_seq"]))
    assert isinstance(pool, pl.DataFrame)
    assert pool["pair_id"].n_unique() == pool.height == 20 + 21 + 260 + 150 + 20
    assert sorted(pool["ingest_seq"]) == list(range(pool.height))  # unique, no gap
    order = pool.sort("ingest_seq")["source"].to_list()
    assert order == ["seed"] * 20 + ["other"] * 21 + ["a"] * 260 + ["b"] * 150 + ["c"] * 20
    indexed = index_keys(ws)  # each pair once, under the origin that pooled it
    assert sorted(pid for pid, _ in indexed) == sorted(pool["pair_id"])
    assert {pid: origin.split("\x1f")[0] for pid, origin in indexed} == dict(
        pool.select("pair_id", "source").iter_rows())
    assert ws.verify() == [] and not ws.listdir("_ingest/run")


def test_a_failing_commit_keeps_the_sources_before_it_and_no_part_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = sources(tmp_path)
    ws = seeded(tmp_path / "ws", tmp_path)
    before = ws.row_count("pool")
    receipts, tokens = staged(ws, specs, "run")
    commit = PoolParts.commit
    calls: list[int] = []

    def second_fails(self: PoolParts, stats: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the second source's commit failed")
        commit(self, stats)

    monkeypatch.setattr(PoolParts, "commit", second_fails)
    with pytest.raises(RuntimeError, match="second source"):
        commit_sources(ws, specs, receipts, tokens)
    sources_in_pool = ws.read("pool", columns=["source"]).column("source").to_pylist()
    assert len(sources_in_pool) == before + 280 and set(sources_in_pool) == {"seed", "a"}
    assert ws.verify() == [] and not ws.listdir("_ingest/run")  # no part of b left, scratch removed
    monkeypatch.setattr(PoolParts, "commit", commit)
    receipts, tokens = staged(ws, specs, "again")
    again = commit_sources(ws, specs, receipts, tokens)
    assert [s.added for s in again] == [0, 150, 0, 20]
    assert ws.row_count("pool") == before + 280 + 150 + 20
